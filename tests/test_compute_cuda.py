"""CUDA compute sizing against llama.cpp's own dry run on an H200 (issue 18).

The expected numbers are `sched_reserve: … compute buffer size` lines recorded by
benchmarks/gpu_compute.py (benchmarks/results/gpu-memory-2026-12-04.json); the model is a
sparse Llama-3-70B-shaped GGUF (header only, no data), written in a second.
"""

from __future__ import annotations

import pytest

from benchmarks.gpu_compute import write_sparse_gguf
from engine.core.memory_types import Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan

DEVICES = [Device("CPU", "cpu", 128 * GiB, 120 * GiB), Device("CUDA0", "gpu", 140 * GiB, 139 * GiB)]


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes") / "llama3-70b.gguf"
    write_sparse_gguf(path, "llama3-70b")
    return inspect_gguf(path)


@pytest.mark.parametrize(
    "ngl,n_ctx,kv,fa,gpu,host,most",
    [
        (-1, 32768, "q8_0", "on", 266.50, 64.09, 1.01),  # issue 18: was +53.5 MiB
        (-1, 131072, "q4_0", "on", 704.09, 160.09, 1.01),  # f16 copies of K and V in the FA output
        (-1, 4096, "f16", "on", 266.50, 36.01, 1.01),
        (-1, 32768, "f16", "off", 4228.01, 100.01, 1.01),
        # layers on the CPU: the ggml-alloc replay of the split graph, node for node, no safety term
        (20, 16384, "f16", "on", 322.00, 48.01, 1.01),  # issue 18: was -55.5 MiB (also a real load)
        (0, 4096, "f16", "on", 1028.13, 36.01, 1.01),  # the replay was 830 MiB before rope's own block
    ],
)
def test_cuda_compute_never_under(llama70b, ngl, n_ctx, kv, fa, gpu, host, most):
    s = PlanSettings(n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=fa, n_gpu_layers=ngl)
    plan = analytic_plan(llama70b, s, DEVICES)
    a_gpu = plan.bytes_for("CUDA0", "compute") / MiB
    a_host = plan.bytes_for("CPU", "compute") / MiB
    assert a_host == pytest.approx(host, abs=0.02)  # graph inputs: exact
    assert a_gpu >= gpu - 1.0  # never under by more than 1 MiB
    assert a_gpu <= gpu * most + 1.0  # within 1 % (f16 FA off: +0.3 %)
    if ngl >= 0:
        assert any("op_offload" in n and "replay" in n for n in plan.notes)
