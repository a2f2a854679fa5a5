"""The GPU compute buffer with layers on the CPU, against every recorded H200 dry run (issue 18).

Data-driven from measurements: benchmarks/results/gpu-memory-2026-12-04.json holds llama.cpp's
`CUDA0 compute buffer` for 609 cases with layers or the output on the CPU (5 shapes, f16/q8_0/
q4_0 K/V, flash attention on and off, 4k-128k, ubatch 512-2048, ngl 0..n, plus real loads).
benchmarks/offload_replay_eval.py plans each one again from the shape's sparse GGUF (header
only, seconds) and reads the plan's CUDA0 compute and its ggml-alloc replay.
"""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.gpu_compute import write_sparse_gguf
from benchmarks.gpu_compute_report import DEVICES
from benchmarks.offload_replay_eval import Case, evaluate
from engine.core.memory_types import PlanSettings
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


def test_experts_on_the_cpu_keep_the_stated_safety_term(tmp_path):
    """--n-cpu-moe is planned as whole layers on the CPU (engine.plan.cpu_moe's stated bound),
    which is not llama.cpp's graph, so the replay keeps its safety term there and says so."""
    path = tmp_path / "qwen3moe-30b-a3b.gguf"
    write_sparse_gguf(path, "qwen3moe-30b-a3b")
    info = inspect_gguf(path)
    s = PlanSettings(n_ctx=16384, type_k="f16", type_v="f16", flash_attn="on", n_gpu_layers=-1)
    moved = analytic_plan(info, dataclasses.replace(s, n_cpu_moe=8), DEVICES)
    whole = analytic_plan(info, dataclasses.replace(s, n_gpu_layers=40), DEVICES)
    assert any(SAFETY in n for n in moved.notes)
    assert not any(SAFETY in n for n in whole.notes)
    assert any("with no safety term" in n for n in whole.notes)
    assert moved.bytes_for("CUDA0", "compute") > whole.bytes_for("CUDA0", "compute")
