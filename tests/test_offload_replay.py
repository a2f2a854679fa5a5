"""The GPU compute buffer with layers on the CPU, against every recorded H200 dry run (issue 18).

Data-driven from measurements: benchmarks/results/gpu-memory-2026-12-04.json holds llama.cpp's
`CUDA0 compute buffer` for 609 cases with layers or the output on the CPU (5 shapes, f16/q8_0/
q4_0 K/V, flash attention on and off, 4k-128k, ubatch 512-2048, ngl 0..n, plus real loads).
benchmarks/offload_replay_eval.py plans each one again from the shape's sparse GGUF (header
only, seconds) and reads the plan's CUDA0 compute and its ggml-alloc replay.
"""

from __future__ import annotations

import pytest

from benchmarks import sched_oracle
from benchmarks.gpu_compute import write_sparse_gguf
from benchmarks.gpu_compute_report import DEVICES
from benchmarks.offload_replay_eval import Case, evaluate
from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.compute_replay import SAFETY


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Case]:
    return evaluate(model_dir=tmp_path_factory.mktemp("shapes"))


def test_every_offloaded_case_is_planned(cases):
    assert len(cases) == 609
    assert all(c.replay is not None for c in cases)  # every shape is a replay family


def test_the_plan_is_never_under_by_more_than_1_mib(cases):
    under = [(c.shape, c.settings, round(c.final - c.exact, 2)) for c in cases if c.final < c.exact - 1.0]
    assert under == []


def test_every_case_is_exact_with_no_safety_term(cases):
    """The replay follows each shape's graph node for node (llama, qwen3, qwen3moe with routed
    experts, gemma3 with sliding-window caches and a tied output), so the plan is the replay
    itself: within 0.01 MiB (the log's rounding) of llama.cpp everywhere."""
    off = [(c.shape, c.settings, round(c.final - c.exact, 2)) for c in cases if abs(c.final - c.exact) > 0.01]
    assert off == []
    assert all(c.final == c.replay or abs(c.final - c.replay) < 0.01 for c in cases if c.replay is not None)


def test_full_offload_is_the_replay_too(tmp_path):
    """With every layer on the GPU the replay is the graph as well: the 144 full-offload dry
    runs (4 parallel sequences included) are exact where the phase terms were up to 66 MiB over."""
    full = [c for c in evaluate(model_dir=tmp_path, full=True) if c.regime == "full"]
    assert len(full) == 144
    off = [(c.shape, c.settings, round(c.final - c.exact, 2)) for c in full if abs(c.final - c.exact) > 0.01]
    assert off == []


def test_experts_on_the_cpu_are_replayed_exactly(tmp_path):
    """--n-cpu-moe: the experts of the first layers stay in a host buffer, so each of their
    MUL_MAT_IDs is offloaded with a copy of the whole expert tensor. No GPU run measured this,
    so the check is benchmarks/sched_oracle.py: llama.cpp's own graph (tools/llama_graph_dump.py
    in a child) through the scheduler port that reproduces every recorded H200 dry run."""
    path = tmp_path / "qwen3moe-30b-a3b.gguf"
    write_sparse_gguf(path, "qwen3moe-30b-a3b")
    info = inspect_gguf(path)
    graph = sched_oracle.dump("qwen3moe-30b-a3b", 8192, "q8_0", "q8_0", "on", 512, tmp_path)
    for ngl, n_cpu_moe in ((-1, 12), (30, 40)):
        s = PlanSettings(
            n_ctx=8192, type_k="q8_0", type_v="q8_0", flash_attn="on", n_gpu_layers=ngl, n_cpu_moe=n_cpu_moe
        )
        plan = analytic_plan(info, s, DEVICES)
        want = sched_oracle.oracle(graph, 48, ngl if ngl >= 0 else 1 << 20, n_cpu_moe)
        assert plan.bytes_for("CUDA0", "compute") == pytest.approx(want, abs=0.01 * MiB)
        assert not any(SAFETY in n for n in plan.notes)


def test_llama3_rope_factors_are_one_shared_copy(tmp_path):
    """Llama 3.1+ files carry rope_freqs.weight; every layer's rope reads it, and the CPU layers
    share one host tensor (TENSOR_DUPLICATED: one per buffer), so its copy starts a split at
    each of their ropes and lives until the last. Without it the plan was up to 91 MiB under
    on such settings; checked against benchmarks/sched_oracle.py (not measured on a GPU)."""
    path = tmp_path / "llama31-8b.gguf"
    write_sparse_gguf(path, "llama31-8b")
    info = inspect_gguf(path)
    graph = sched_oracle.dump("llama31-8b", 50000, "f16", "f16", "off", 128, tmp_path)
    for ngl in (11, 24):
        s = PlanSettings(
            n_ctx=50000, type_k="f16", type_v="f16", flash_attn="off", n_gpu_layers=ngl, n_ubatch=128
        )
        plan = analytic_plan(info, s, DEVICES)
        want = sched_oracle.oracle(graph, 32, ngl)
        assert plan.bytes_for("CUDA0", "compute") == pytest.approx(want, abs=0.01 * MiB)
