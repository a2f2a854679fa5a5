"""What the CUDA driver takes on a GPU beyond the buffers llama.cpp logs (engine.plan.cuda_driver).

Data-driven from a measurement: benchmarks/results/fit-loads-trace-2026-12-05.json holds, for
six loads on an H200 (load mode NONE, all GPU memory free), cudaMemGetInfo's free memory after
every llama.cpp log line and the CUDA0 buffers llama.cpp logged. The GPU lost more than those
buffers; the plan's "driver" component must be exactly that difference.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_compute import write_sparse_gguf
from engine.core.build import CUDA_RESERVE_MIB
from engine.core.memory_types import Allocation, Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.cuda_driver import HEADROOM, driver_allocations
from engine.plan.drafting import drafting_plan
from engine.plan.fit import fit
from engine.plan.margins import Margins
from tests.helpers import mtp_models as mm

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks/results"
TRACE = RESULTS / "fit-loads-trace-2026-12-05.json"
HOST = Device("CPU", "cpu", 1 << 40, 1 << 40)
H200 = Device("CUDA0", "gpu", 143771 * MiB, 142629 * MiB)
LOG_ROUNDING = 0.02  # MiB: the trace and the log both print two decimals
LOADS = [c for c in json.loads(TRACE.read_text())["cases"] if c["kvdeck_load_no_ballast"].get("ok")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")

    @cache
    def shape(name: str) -> GGUFInfo:
        write_sparse_gguf(folder / f"{name}.gguf", name)  # a header and a hole: no disk, no time
        return inspect_gguf(folder / f"{name}.gguf")

    return shape


def traced_settings(case: dict[str, Any]) -> PlanSettings:
    """The load child's settings: KV Deck's fitted context, layers and experts on the CPU,
    load mode NONE, and llama_context_default_params()'s swa_full = true (the child set it false
    only after these loads)."""
    k = case["kvdeck"]
    return PlanSettings(
        n_ctx=k["n_ctx"],
        n_gpu_layers=k["n_gpu_layers"],
        n_cpu_moe=k["n_cpu_moe"],
        load_mode="none",
        swa_full=True,
    )


def measured_extra_mib(load: dict[str, Any]) -> float:
    """What the GPU lost during the load, less every CUDA0 buffer llama.cpp logged."""
    trace = load["free_trace_mib"]
    return trace[0][0] - trace[-1][0] - load["cuda0_total_mib"]


def mib(plan: Any, component: str | None = None) -> float:
    return plan.bytes_for("CUDA0", component) / MiB


@pytest.mark.parametrize("case", LOADS, ids=[f"{c['shape']}-{c['budget_mib'] // 1024}GiB" for c in LOADS])
def test_the_gpu_loses_the_logged_buffers_plus_the_driver_term(shapes, case):
    load = case["kvdeck_load_no_ballast"]
    plan = analytic_plan(shapes(case["shape"]), traced_settings(case), [HOST, H200])
    logged = load["cuda0_buffers_mib"]
    # the settings are the load's: every logged buffer is the plan's
    assert mib(plan, "weights") == pytest.approx(logged["model"], abs=LOG_ROUNDING)
    assert mib(plan, "kv") == pytest.approx(logged["KV"], abs=LOG_ROUNDING)
    assert mib(plan, "compute") == pytest.approx(logged["compute"], abs=LOG_ROUNDING)
    # and the rest of what the GPU lost is the driver term, to the trace's rounding
    # (less the last page, which the plan keeps free and nothing takes)
    assert mib(plan, "driver") - HEADROOM / MiB == pytest.approx(measured_extra_mib(load), abs=LOG_ROUNDING)


def test_the_five_loads_of_the_finding(shapes):
    """The five H200 figures (MiB) the finding names, modelled and measured."""
    want = {
        ("llama3-8b", 8192): 4.67,  # full offload
        ("llama3-8b", 3072): 11.42,  # 9 layers: 3 GiB of host weights pinned
        ("qwen3-32b", 10240): 27.07,  # 24 of 64 layers
        ("qwen3moe-30b-a3b", 8192): 27.52,  # 37 layers' experts on the CPU
        ("gemma3-27b", 20480): 4.66,  # full offload
    }
    got = {}
    for case in LOADS:
        key = (case["shape"], case["budget_mib"])
        if key in want:
            plan = analytic_plan(shapes(case["shape"]), traced_settings(case), [HOST, H200])
            got[key] = (
                round(mib(plan, "driver") - HEADROOM / MiB, 2),
                round(measured_extra_mib(case["kvdeck_load_no_ballast"]), 2),
            )
    assert {k: m for k, (m, _) in got.items()} == want
    assert {k: m for k, (_, m) in got.items()} == want


def test_the_term_says_what_it_is_part_by_part(shapes):
    """qwen3-32b with 24 of 64 layers on the GPU: three buffers rounded up to 2 MiB, 10.9 GiB of
    host weights, compute and logits pinned (2 MiB of page tables per GiB), and the context."""
    case = next(c for c in LOADS if c["shape"] == "qwen3-32b")
    plan = analytic_plan(shapes("qwen3-32b"), traced_settings(case), [HOST, H200])
    [driver] = [a for a in plan.allocations if a.component == "driver"]
    assert driver.device == "CUDA0"
    assert "2 MiB allocation granularity of 3 buffers (+3.07 MiB)" in driver.detail
    assert "page tables for 11195.60 MiB of pinned host memory (+22 MiB)" in driver.detail
    assert "context (+2 MiB)" in driver.detail


def test_mapped_weights_are_not_pinned(shapes):
    """With mmap the host's weights are the mapped file (llama.cpp swaps the GPU's host buffer
    type for the CPU's), so only the host compute buffer and the logits stay pinned."""
    case = next(c for c in LOADS if c["shape"] == "qwen3-32b")
    copied = analytic_plan(shapes("qwen3-32b"), traced_settings(case), [HOST, H200])
    mapped = analytic_plan(shapes("qwen3-32b"), traced_settings(case).replace(load_mode="mmap"), [HOST, H200])
    assert mib(copied, "driver") - mib(mapped, "driver") == pytest.approx(22)  # the page tables
    [driver] = [a for a in mapped.allocations if a.component == "driver"]
    pinned = (mapped.bytes_for("CPU", "compute") + mapped.bytes_for("CPU", "output")) / MiB
    assert f"page tables for {pinned:.2f} MiB of pinned host memory (+0 MiB)" in driver.detail


def test_only_cuda_gpus_pay_it(shapes):
    """Measured on CUDA only: no term on the host, a worker's device or another backend's GPU."""
    info = shapes("llama3-8b")
    s = PlanSettings(n_ctx=8192, load_mode="none")
    assert analytic_plan(info, s, [HOST]).bytes_for(None, "driver") == 0
    rpc = Device("RPC0[10.0.0.5:50052]", "gpu", 80 * GiB, 80 * GiB, endpoint="10.0.0.5:50052")
    assert analytic_plan(info, s, [HOST, rpc]).bytes_for(None, "driver") == 0
    vulkan = Device("Vulkan0", "gpu", 80 * GiB, 80 * GiB)
    assert analytic_plan(info, s, [HOST, vulkan]).bytes_for(None, "driver") == 0


def test_every_gpu_maps_all_pinned_memory(shapes):
    """Pinned host memory is mapped into every GPU, so each pays its page tables; each rounds its
    own buffers and holds its own part of the context."""
    info = shapes("llama3-8b")
    gpus = [Device(f"CUDA{i}", "gpu", 80 * GiB, 80 * GiB) for i in range(2)]
    plan = analytic_plan(info, PlanSettings(n_ctx=8192, n_gpu_layers=17, load_mode="none"), [HOST, *gpus])
    pinned = sum(a.bytes for a in plan.allocations if a.device == "CPU" and a.component != "kv")
    for gpu in gpus:
        [driver] = [a for a in plan.allocations if a.component == "driver" and a.device == gpu.name]
        # 16 layers' weights and the embeddings, the host compute buffer and the logits: 2.1 GiB, so 4 MiB on each GPU
        assert f"page tables for {pinned / MiB:.2f} MiB of pinned host memory (+4 MiB)" in driver.detail
        assert "context (+2 MiB)" in driver.detail


def test_fit_leaves_room_for_it(shapes):
    """A GPU with room for qwen3-32b's 24-layer buffers but not for the driver term as well (the
    H200 load that failed with 309 MiB free for a 306.75 MiB compute buffer): fit gives a layer
    up rather than promise memory the driver takes."""
    info = shapes("qwen3-32b")
    s = PlanSettings(n_ctx=32768, n_gpu_layers=24, load_mode="none")
    wanted = analytic_plan(info, s, [HOST, H200])
    buffers = wanted.bytes_for("CUDA0") - wanted.bytes_for("CUDA0", "driver")
    gpu = Device("CUDA0", "gpu", H200.total_bytes, buffers + 10 * MiB)
    r = fit(
        info,
        s.replace(n_gpu_layers=-1),
        [HOST, gpu],
        plan_fn=analytic_plan,
        margins=Margins(gpu=0),
        min_context=32768,
        max_context=32768,
    )
    assert r.fits and r.settings.n_gpu_layers == 23
    assert r.plan.bytes_for("CUDA0", "driver") > 0
    assert r.plan.resident_bytes_for("CUDA0") <= r.budgets["CUDA0"]


def test_what_an_h100_process_holds_beyond_buffers_and_driver_term_is_one_constant():
    """Another GPU, another measurement: seven mmap loads on an H100 (2026-11-25) held 522.1-523.2
    MiB outside their logged buffers (NVML per process). Less the driver term of each load's
    logged buffers, the same 518.0 MiB remains every time: the CUDA context and kernels, which is
    the runtime's reserve (engine.core.build), so fit does not count the driver term twice."""
    data = json.loads((RESULTS / "gpu-memory-2026-11-25.json").read_text())
    rest = []
    for case, footprint in zip(data["cases"], data["footprint"], strict=True):
        logged = [
            Allocation(component, device, nbytes)
            for device, parts in case["measured"].items()
            for component, nbytes in parts.items()
            if nbytes
        ]
        gpu = Device("CUDA0", "gpu", 80 * GiB, 80 * GiB)
        [driver] = driver_allocations(logged, "mmap", [gpu], "CUDA0")
        rest.append(footprint["outside_buffers_mib"] - (driver.bytes - HEADROOM) / MiB)
    outside = [f["outside_buffers_mib"] for f in data["footprint"]]
    assert max(outside) - min(outside) > 1  # the raw figure moves with the settings
    assert max(rest) - min(rest) < 0.1  # its rest does not (NVML and the sum print 0.1 MiB)
    assert max(rest) <= CUDA_RESERVE_MIB < max(rest) + 1


@pytest.fixture(scope="module")
def mtp_models(tmp_path_factory):
    return mm.write_set(tmp_path_factory.mktemp("mtp-driver"))


def test_a_drafting_context_pays_for_its_own_context(mtp_models):
    """The MTP heads' context is a second llama_context: its own 2 MiB on the GPU, its buffers'
    rounding, and (the MTP blocks loading into the target's model buffer) no second model buffer."""
    info = inspect_gguf(mtp_models["hyv3"])
    gpu = Device("CUDA0", "gpu", 80 * GiB, 80 * GiB)
    target = analytic_plan(info, PlanSettings(n_ctx=4096, mtp=True, load_mode="none"), [HOST, gpu])
    drafter = drafting_plan(info, target, [HOST, gpu])
    [driver] = [a for a in drafter.allocations if a.component == "driver"]
    assert driver.device == "CUDA0" and "its context (+2 MiB)" in driver.detail
    assert 2 * MiB <= driver.bytes <= 2 * MiB + 2 * MiB * 2  # its KV and compute rounded, at most


def test_every_gpu_keeps_its_last_page_once_however_many_contexts():
    """No cudaMalloc hands out a GPU's last 2 MiB page (the H200 probe: the largest buffer always
    left 3.12 MiB free), so the term keeps it on each GPU, once: a drafting context adds none."""
    from engine.plan.cuda_driver import driver_parts

    one = driver_parts([("CUDA0", 100 * MiB), ("CUDA1", 10 * MiB)], 0)
    assert {dev: p.headroom for dev, p in one.items()} == {"CUDA0": HEADROOM, "CUDA1": HEADROOM}
    two = driver_parts([("CUDA0", 100 * MiB), ("CUDA0", 7 * MiB)], 0, contexts=2)
    assert two["CUDA0"].minus(one["CUDA0"]).headroom == 0
    assert "last page" in one["CUDA0"].words()
