"""The CUDA driver's share of a load (engine.plan.cuda_driver) against what the GPU lost, for
benchmarks/gpu_fit.py's loads, and a probe of how much of the free memory one cudaMalloc can take.

Each load child of gpu_fit.py records cudaMemGetInfo's free memory after every llama.cpp log
line (``free_trace_mib``). What the GPU lost from the first reading to the last, less the CUDA0
buffers llama.cpp logged, is what the plan's "driver" component models; :func:`driver_check`
puts the two side by side, so every H200 run checks the term again.

The probe (``python benchmarks/fit_driver.py --alloc-probe``, run by gpu_fit.py once per run)
asks the question the term leaves open: on 2026-12-05 a compute buffer of 306.75 MiB (308 in
2 MiB pages) failed with 309.12 MiB free, so a cudaMalloc seems to need more than its rounded
size. For a few levels of free memory left by a ballast, it finds the largest cudaMalloc that
succeeds, in 2 MiB steps, and records it beside the free reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.memory_types import Device, MiB, PlanSettings  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402
from engine.plan.cuda_driver import HEADROOM  # noqa: E402

PROBE_LEAVE_MIB = (64, 309, 310, 1024)  # free memory the probe's ballast leaves (about)
STEP = 2 * MiB


def measured_extra_mib(load: dict[str, Any] | None) -> float | None:
    """What a load that succeeded took from the GPU beyond the CUDA0 buffers llama.cpp logged."""
    if not load or not load.get("ok") or not load.get("free_trace_mib"):
        return None
    trace = load["free_trace_mib"]
    return round(trace[0][0] - trace[-1][0] - load["cuda0_total_mib"], 2)


def load_settings(fitted: dict[str, Any]) -> PlanSettings:
    """The settings gpu_fit.py's load child gives llama.cpp for a fitted result: its context and
    layers, load mode NONE, the common parameters' swa_full = false, llama_context_default_params()
    for the rest (which PlanSettings' defaults equal)."""
    return PlanSettings(
        n_ctx=fitted["n_ctx"],
        n_gpu_layers=fitted["n_gpu_layers"],
        n_cpu_moe=fitted.get("n_cpu_moe", 0),
        load_mode="none",
        swa_full=False,
    )


def driver_check(
    info: Any, settings: PlanSettings, load: dict[str, Any] | None, host: Device
) -> dict[str, Any]:
    """The plan's driver term on CUDA0 for ``settings`` against the load's measured extra."""
    gpu = Device("CUDA0", "gpu", 143771 * MiB, 143771 * MiB)
    plan = analytic_plan(info, settings, [host, gpu])
    driver = [a for a in plan.allocations if a.component == "driver" and a.device == "CUDA0"]
    # what the GPU loses; the headroom is memory the plan keeps free, not memory taken
    modelled = round((sum(a.bytes for a in driver) - HEADROOM * len(driver)) / MiB, 2)
    measured = measured_extra_mib(load)
    return {
        "modelled_mib": modelled,
        "measured_extra_mib": measured,
        "error_mib": None if measured is None else round(modelled - measured, 2),
        "detail": driver[0].detail if driver else "",
    }


def alloc_probe() -> dict[str, Any]:
    """Run the probe in a child (its ballasts go with it)."""
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--alloc-probe-child"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    res = next((json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")), None)
    return res or {"rc": p.returncode, "died": p.stderr[-600:]}


def _probe_child() -> None:  # pragma: no cover - runs in the child process, on a GPU
    import ctypes

    rt = ctypes.CDLL("libcudart.so.13")
    rt.cudaFree(None)
    free, total = ctypes.c_size_t(), ctypes.c_size_t()

    def free_now() -> int:
        rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
        return free.value

    def try_alloc(nbytes: int) -> tuple[bool, int]:
        """Whether ``nbytes`` can be had, and the free reading while it is held."""
        ptr = ctypes.c_void_p()
        if rt.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)) != 0:
            rt.cudaGetLastError()
            return False, 0
        held = free_now()
        rt.cudaFree(ptr)
        return True, held

    levels = []
    for leave in PROBE_LEAVE_MIB:
        ballast = ctypes.c_void_p()
        if rt.cudaMalloc(ctypes.byref(ballast), ctypes.c_size_t(free_now() - leave * MiB)) != 0:
            rt.cudaGetLastError()
            levels.append({"leave_mib": leave, "ballast_ok": False})
            continue
        before = free_now()
        lo, hi = 0, before // STEP + 2  # lo pages fit, hi pages do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if try_alloc(mid * STEP)[0] else (lo, mid)
        _ok, held = try_alloc(lo * STEP)
        exact_pages = before // STEP * STEP  # every whole 2 MiB page of the free reading
        levels.append(
            {
                "leave_mib": leave,
                "free_mib": round(before / MiB, 2),
                "largest_alloc_mib": lo * STEP / MiB,
                "free_while_held_mib": round(held / MiB, 2),
                "all_whole_pages_ok": try_alloc(exact_pages)[0] if exact_pages else None,
                "headroom_needed_mib": round((before - lo * STEP) / MiB, 2),
            }
        )
        rt.cudaFree(ballast)
    print(json.dumps({"levels": levels}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    if "--alloc-probe-child" in sys.argv:
        _probe_child()
    elif "--alloc-probe" in sys.argv:
        print(json.dumps(alloc_probe(), indent=1))
