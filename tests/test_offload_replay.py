"""The GPU compute buffer with layers on the CPU, against every recorded H200 dry run (issue 18).

Data-driven from measurements: benchmarks/results/gpu-memory-2026-12-04.json holds llama.cpp's
`CUDA0 compute buffer` for 609 cases with layers or the output on the CPU (5 shapes, f16/q8_0/
q4_0 K/V, flash attention on and off, 4k-128k, ubatch 512-2048, ngl 0..n, plus real loads).
benchmarks/offload_replay_eval.py plans each one again from the shape's sparse GGUF (header
only, seconds) and reads the plan's CUDA0 compute and its ggml-alloc replay.
"""

from __future__ import annotations

import pytest

from benchmarks.offload_replay_eval import Case, evaluate


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Case]:
    return evaluate(model_dir=tmp_path_factory.mktemp("shapes"))


def test_every_offloaded_case_is_planned(cases):
    assert len(cases) == 609
    assert all(c.replay is not None for c in cases)  # every shape is a replay family


def test_the_plan_is_never_under_by_more_than_1_mib(cases):
    under = [(c.shape, c.settings, round(c.final - c.exact, 2)) for c in cases if c.final < c.exact - 1.0]
    assert under == []


def test_llama_and_qwen3_are_exact_with_no_safety_term(cases):
    """The replay follows their graph node for node, so the plan is the replay itself."""
    dense = [c for c in cases if c.shape in ("llama3-8b", "llama3-70b", "qwen3-32b")]
    assert len(dense) == 367
    off = [(c.shape, c.settings, round(c.final - c.exact, 2)) for c in dense if abs(c.final - c.exact) > 0.02]
    assert off == []


def test_the_replay_alone_is_within_1_mib_in_518_cases(cases):
    """gemma3 and routed experts still differ (their plan adds the stated safety term)."""
    within = sum(1 for c in cases if c.replay is not None and abs(c.replay - c.exact) <= 1.0)
    assert within >= 518
