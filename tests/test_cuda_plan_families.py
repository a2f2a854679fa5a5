"""Specification: the analytic plan and fit work for every model on a CUDA machine (issue 18).

A machine is plan input: its devices with their total and free memory (`Device`), as
`kvdeck plan` gets them from device detection. No GPU is needed to plan for one. The CUDA
compute placement (engine.plan.compute_placement) models llama.cpp's standard attention layers;
a model with layers it does not model (recurrent, delta-net, MLA, sparse or lightning attention,
per-layer inputs) must still get a plan: the stated bound, with a note saying so, never a
traceback and never a negative or non-finite figure. Checked over every synthetic family, plain
and with all keys present, the self-drafting models (qwen35, hy_v3, gemma4) and the real SmolLM2
and Gemma 3 files, on one GPU and on two, with every layer on the GPU, some and none, under
several K/V settings.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from engine.core.memory_types import Device, GiB, MemoryPlan
from engine.core.memory_types import PlanSettings as S
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import fit
from engine.plan.kv_sizes import geometry
from tests.helpers.all_keys import zero_keys
from tests.helpers.gguf_factory import FAMILIES, write_family
from tests.helpers.mtp_models import write_gemma4_target, write_hyv3, write_qwen35

H200 = [Device("CPU", "cpu", 128 * GiB, 120 * GiB), Device("CUDA0", "gpu", 140 * GiB, 139 * GiB)]
TWO = [H200[0], Device("CUDA0", "gpu", 80 * GiB, 79 * GiB), Device("CUDA1", "gpu", 24 * GiB, 20 * GiB)]
KV = [
    S(type_k="f16", type_v="f16", flash_attn="on"),
    S(type_k="q8_0", type_v="q8_0", flash_attn="on"),
    S(type_k="q4_0", type_v="q4_0", flash_attn="auto", n_seq_max=2),
    S(type_k="f16", type_v="f16", flash_attn="off"),
]
SELF_DRAFTING = {"qwen35": write_qwen35, "hy_v3": write_hyv3, "gemma4-target": write_gemma4_target}
MODELS = [*FAMILIES, *(f"{n} (all keys)" for n in FAMILIES), *SELF_DRAFTING, "smollm2", "gemma3-270m"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("families")
    (d / "all").mkdir()
    out = {n: write_family(n, d) for n in FAMILIES}
    out |= {f"{n} (all keys)": write_family(n, d / "all", **zero_keys(n)) for n in FAMILIES}
    return out | {n: w(d / f"{n}.gguf") for n, w in SELF_DRAFTING.items()}


@pytest.fixture
def model(request: pytest.FixtureRequest, files: dict[str, Path]) -> GGUFInfo:
    name = request.param
    if name == "smollm2":
        return inspect_gguf(request.getfixturevalue("smollm2_path"))
    if name == "gemma3-270m":
        return inspect_gguf(request.getfixturevalue("gemma3_path"))
    return inspect_gguf(files[name])


def _sane(plan: MemoryPlan) -> None:
    """Every per-device figure is a finite, non-negative whole number of bytes."""
    for a in plan.allocations:
        assert isinstance(a.bytes, int) and math.isfinite(a.bytes) and a.bytes >= 0, a
    for dev in plan.devices():
        assert plan.bytes_for(dev) >= 0


def test_a_hybrid_delta_net_model_plans_on_cuda(files: dict[str, Path]) -> None:
    """Regression: qwen35 (gated delta-net + attention layers) crashed the CUDA compute placement
    (its recurrent layers have no Q/K/V/O matrices for the ggml-alloc replay)."""
    info = inspect_gguf(files["qwen35"])
    full = analytic_plan(info, S(n_ctx=4096, flash_attn="off"), H200)
    part = analytic_plan(info, S(n_ctx=4096, flash_attn="off", n_gpu_layers=1), H200)  # layer 0 on the CPU
    for plan in (full, part):
        _sane(plan)
        assert plan.bytes_for("CUDA0", "compute") > 0 and plan.bytes_for("CPU", "compute") > 0
        assert any("qwen35 has recurrent layers" in n and "bound" in n for n in plan.notes), plan.notes
    assert any("whole recurrent state" in n for n in part.notes)
    assert part.bytes_for("CUDA0", "compute") > full.bytes_for("CUDA0", "compute")


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_cuda_plan_and_fit_for_every_model(model: GGUFInfo) -> None:
    layers = model.n_layer + 1  # the output layer counts as one
    for kv in KV:
        for ngl, devices in itertools.product((-1, layers // 2, 1, 0), (H200, TWO)):
            plan = analytic_plan(model, kv.replace(n_ctx=2048, n_gpu_layers=ngl), devices)
            _sane(plan)
            if geometry(model).rec_layers:  # recurrent layers: the stated bound, said so
                assert any("has recurrent layers" in n and "bound" in n for n in plan.notes), plan.notes
        weights = analytic_plan(model, kv.replace(n_ctx=512), H200).bytes_for("CUDA0", "weights")
        small = [H200[0], Device("CUDA0", "gpu", 8 * GiB, weights // 2 + 1)]  # room for about half
        for devices in (H200, small):
            result = fit(model, kv.replace(n_ctx=0), devices, plan_fn=analytic_plan, margin_bytes=0)
            _sane(result.plan)
            assert result.reason
