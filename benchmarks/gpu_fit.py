"""KV Deck's fit against llama.cpp's `llama-fit-params` with identical inputs, and proof that
each fitted setting loads in the memory it was fitted to (issue 18).

    python benchmarks/gpu_fit.py --out DIR [--fit-params PATH] [--shapes a,b]

For every case (a shape of benchmarks/gpu_compute.py written as a sparse GGUF, a GPU budget,
a context given or left to the fit) `llama-fit-params -fitt MARGIN` runs first, with the margin
that leaves the budget of what NVML reads free; KV Deck's fit is then given exactly the free
memory llama-fit-params read (after creating its CUDA context) and the same margin (and the
same context, when one is given). Each fitted setting (KV Deck's and llama-fit-params') is then loaded for real in a child
process that first takes all GPU memory but the budget with a ballast `cudaMalloc`, so a load
that succeeds needed no more than the budget. The child reports llama.cpp's buffer sizes,
which are compared with KV Deck's plan for its setting. The same setting is loaded once more with
all memory free, and each load's free-memory trace is set against the plan's CUDA driver term
(benchmarks/fit_driver.py: ``driver_mib`` per case; ``alloc_probe``: how much of the free memory
one cudaMalloc can take). Writes `fit-<date>.json` in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "--load-child" in sys.argv:  # llama_cpp before numpy: numpy first segfaults the CUDA build's
    import llama_cpp  # noqa: F401, E402  # model load (mtp_gpu.py's probes on the H200, 2026-12-05)

from benchmarks.fit_driver import STEP, alloc_probe, driver_check, load_settings, measured_extra_mib  # noqa: E402
from benchmarks.gpu_compute import write_sparse_gguf  # noqa: E402
from engine.core.memory_types import Device, MiB, PlanSettings  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402
from engine.plan.cpu_moe import override_patterns  # noqa: E402
from engine.plan.fit import fit  # noqa: E402
from engine.plan.margins import Margins  # noqa: E402

# (shape, GPU budget in MiB, context given by the user or 0 for "fit it")
CASES: list[tuple[str, int, int]] = [
    ("llama3-8b", 8 * 1024, 0),
    ("llama3-8b", 3 * 1024, 32768),
    ("gemma3-27b", 8 * 1024, 32768),
    ("qwen3-32b", 10 * 1024, 32768),
    ("qwen3moe-30b-a3b", 8 * 1024, 32768),
    ("llama3-70b", 24 * 1024, 32768),
    ("llama3-70b", 12 * 1024, 8192),
    ("gemma3-27b", 20 * 1024, 0),
    ("llama3-70b", 44 * 1024, 0),
]


def llama_fit_params(binary: str, model: Path, margin_mib: int, n_ctx: int) -> dict[str, Any]:
    """llama-fit-params' answer, and the free memory it read (after creating its CUDA context)."""
    cmd = [binary, "-m", str(model), "-fitt", str(margin_mib), "-lv", "4"]
    if n_ctx:
        cmd += ["-c", str(n_ctx)]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    m = re.search(r"-c (\d+) -ngl (-?\d+)(.*)", out)
    f = re.findall(r"vs\. (\d+) MiB of free device memory", out) or re.findall(
        r"(\d+) MiB of free device memory", out
    )
    return {
        "n_ctx": int(m.group(1)) if m else None,
        "n_gpu_layers": int(m.group(2)) if m else None,
        "extra_args": m.group(3).strip() if m else "",
        "free_mib": int(f[-1]) if f else None,
        "rc": r.returncode,
        "wall_s": round(time.time() - t, 1),
        "tail": out[-600:],
    }


def nvml_free_mib() -> int:
    import pynvml

    pynvml.nvmlInit()
    info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    return int(info.free) // MiB


def load_child() -> None:  # pragma: no cover - runs in the child process
    """Take all GPU memory but `budget_mib`, then load the model and create the context."""
    import ctypes

    import llama_cpp.llama_cpp as LL

    job = json.loads(sys.stdin.read())
    rt = ctypes.CDLL("libcudart.so.13")
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    rt.cudaFree(None)
    rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    # cudaMalloc takes whole 2 MiB pages: a ballast of free - budget took up to 2 MiB of the
    # budget (qwen3-32b on 2026-12-05: 9713.12 MiB left of 9714), so it is rounded down
    ballast = (free.value - job["budget_mib"] * MiB) // STEP * STEP if job.get("ballast", True) else 0
    ptr = ctypes.c_void_p()
    ok_ballast = ballast <= 0 or rt.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(ballast)) == 0
    rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    lines: list[str] = []
    # free device memory after every log line that changed it: what the load takes outside the
    # buffers llama.cpp logs shows up as a drop no "buffer size" line explains
    trace: list[tuple[float, str]] = [(free.value / MiB, "before the load")]
    now = ctypes.c_size_t()

    def on_log(level: int, text: bytes, _ud: object) -> None:
        msg = text.decode("utf-8", "replace")
        lines.extend(msg.splitlines())
        rt.cudaMemGetInfo(ctypes.byref(now), ctypes.byref(total))
        if abs(now.value / MiB - trace[-1][0]) >= 0.5:
            trace.append((now.value / MiB, (lines[-1] if lines else msg).strip()[:160]))

    cb = LL.llama_log_callback(on_log)
    LL.llama_log_set(cb, ctypes.c_void_p())
    LL.llama_backend_init()
    mp = LL.llama_model_default_params()
    mp.n_gpu_layers = job["ngl"]
    # the default load mode (AUTO) segfaulted inside llama_model_load_from_file on the H200
    # (every case, 2026-12-04); gpu_compute.py's real loads use NONE and load fine
    mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
    keep_alive: list[object] = []
    if job.get("cpu_patterns"):  # --n-cpu-moe's or llama-fit-params' -ot PATTERN=CPU
        from engine.child.overrides import cpu_overrides

        arr = cpu_overrides(job["cpu_patterns"])
        mp.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)
        keep_alive.append(arr)
    model = LL.llama_model_load_from_file(job["path"].encode(), mp)
    ok = False
    if model:
        cp = LL.llama_context_default_params()
        cp.n_ctx = job["n_ctx"]
        # llama.cpp's common parameters (llama-fit-params', KV Deck's runtime): the SWA cache is
        # sized to the window; llama_context_default_params() has swa_full = true, a full-size
        # SWA cache that no fit assumed (the gemma3 loads of 2026-12-05 failed on it)
        cp.swa_full = False
        ctx = LL.llama_init_from_model(model, cp)
        ok = bool(ctx)
    keep = [ln for ln in lines if "buffer size" in ln or "failed" in ln or "error" in ln.lower()]
    rt.cudaMemGetInfo(ctypes.byref(now), ctypes.byref(total))
    trace.append((now.value / MiB, "after the context"))
    out = {"ok": ok, "ballast_ok": ok_ballast, "free_before_load_mib": free.value // MiB, "lines": keep}
    out["errors"] = [ln for ln in keep if "buffer size" not in ln]
    out["free_trace_mib"] = [(round(f, 2), ln) for f, ln in trace]
    print(json.dumps(out), flush=True)
    os._exit(0)  # the ballast and the model go with the process


def cpu_patterns(extra_args: str) -> list[str] | None:
    """The tensor patterns llama-fit-params' ``-ot "PATTERN=CPU,..."`` sends to the CPU (it
    prints them as llama.cpp's ``-ot`` takes them, comma-separated: tools/fit-params); [] for
    none; None when its answer has anything else (a tensor split, another buffer type), which
    this one-GPU load cannot reproduce."""
    m = re.fullmatch(r'\s*(?:-ot "([^"]*)")?\s*', extra_args)
    if m is None:
        return None
    pairs = [x.rpartition("=") for x in m.group(1).split(",")] if m.group(1) else []
    return [pat for pat, _, buft in pairs] if all(buft == "CPU" for _, _, buft in pairs) else None


def load(
    path: Path,
    ngl: int,
    n_ctx: int,
    budget_mib: int,
    patterns: list[str] | None = None,
    ballast: bool = True,
) -> dict[str, Any]:
    """Load in a child with only `budget_mib` of GPU memory free (``patterns``: tensors sent to
    the CPU buffer type, as --n-cpu-moe or -ot do)."""
    t = time.time()
    job = {
        "path": str(path),
        "ngl": ngl,
        "n_ctx": n_ctx,
        "budget_mib": budget_mib,
        "cpu_patterns": patterns or [],
        "ballast": ballast,
    }
    p = subprocess.run(
        [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), "--load-child"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=400,
    )
    res = next((json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")), None)
    if res is None:
        return {
            "ok": False,
            "rc": p.returncode,
            "died": (p.stdout[-300:] + p.stderr[-900:]),
            "wall_s": round(time.time() - t, 1),
        }
    buffers: dict[str, float] = {}
    for ln in res.pop("lines"):
        m = re.search(r"(\S+) (model|KV|compute|output) buffer size = +([0-9.]+) MiB", ln)
        if m and m.group(1).startswith("CUDA0"):
            buffers[m.group(2)] = buffers.get(m.group(2), 0.0) + float(m.group(3))
    res["cuda0_buffers_mib"] = buffers
    res["cuda0_total_mib"] = round(sum(buffers.values()), 2)
    res["wall_s"] = round(time.time() - t, 1)
    return res


def kvdeck_fit(info: Any, free_mib: int, margin_mib: int, n_ctx: int, host: Device) -> dict[str, Any]:
    gpu = Device("CUDA0", "gpu", 143771 * MiB, free_mib * MiB, reserved_bytes=0)
    devices = [host, gpu]
    kw: dict[str, Any] = {"plan_fn": analytic_plan, "margins": Margins(gpu=margin_mib * MiB)}
    if n_ctx:
        kw.update(min_context=n_ctx, max_context=n_ctx)
    r = fit(info, PlanSettings(n_ctx=n_ctx, load_mode="none"), devices, **kw)  # as load() loads
    plan = analytic_plan(info, r.settings, devices)
    return {
        "n_ctx": r.plan.n_ctx,
        "n_gpu_layers": r.settings.n_gpu_layers,
        "n_cpu_moe": r.settings.n_cpu_moe,
        "fits": r.fits,
        "limited_by": r.limited_by,
        "planned_cuda0_mib": {
            c: round(plan.bytes_for("CUDA0", c) / MiB, 2)
            for c in ("weights", "kv", "compute", "output", "driver")
        },
        "planned_cuda0_total_mib": round(plan.bytes_for("CUDA0") / MiB, 2),
    }


def _load_all(case: dict[str, Any], model: Path, usable: int, info: Any, host: Device) -> None:
    """Load KV Deck's fitted setting and llama-fit-params' (with their CPU overrides) in
    ``usable`` MiB of GPU memory, KV Deck's once more with all memory free, and set each load's
    extra beside the plan's driver term for its setting."""
    k, ref = case["kvdeck"], case["llama_fit_params"]
    ours = override_patterns(k.get("n_cpu_moe", 0))
    if k["fits"]:
        case["kvdeck_load"] = load(model, k["n_gpu_layers"], k["n_ctx"], usable, ours)
        case["kvdeck_load_no_ballast"] = load(model, k["n_gpu_layers"], k["n_ctx"], usable, ours, False)
    theirs = cpu_patterns(ref.get("extra_args", ""))
    if ref.get("n_ctx") and theirs is not None:
        case["llama_fit_params_load"] = load(model, ref["n_gpu_layers"], ref["n_ctx"], usable, theirs)
    checks = {
        key: driver_check(info, load_settings(k), case[key], host)
        for key in ("kvdeck_load", "kvdeck_load_no_ballast")
        if key in case
    }
    if "llama_fit_params_load" in case:  # its -ot overrides are no --n-cpu-moe: planned without
        mine = load_settings(ref) if not theirs else None
        checks["llama_fit_params_load"] = (
            driver_check(info, mine, case["llama_fit_params_load"], host)
            if mine is not None
            else {"measured_extra_mib": measured_extra_mib(case["llama_fit_params_load"])}
        )
    case["driver_mib"] = checks


def loads_of(src: Path, out: Path, mdir: Path, shapes: set[str]) -> int:
    """Load every fitted setting of an earlier run again (same budgets), e.g. after a fix."""
    res = json.loads(src.read_text())
    out.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    if shapes:
        res["cases"] = [c for c in res["cases"] if c["shape"] in shapes]
    res["alloc_probe"] = alloc_probe()
    host = _host()
    for case in res["cases"]:
        model = mdir / f"{case['shape']}.gguf"
        if not model.exists():
            write_sparse_gguf(model, case["shape"])
        usable = case["free_mib_both"] - case["margin_mib_both"]
        _load_all(case, model, usable, inspect_gguf(model), host)
        print(case["shape"], case.get("kvdeck_load", {}).get("ok"), flush=True)
        (out / src.name).write_text(json.dumps(res, indent=1))
    return 0


def _host() -> Device:
    import psutil

    vm = psutil.virtual_memory()
    return Device("CPU", "cpu", vm.total, vm.available)


def main() -> int:
    if "--load-child" in sys.argv:
        load_child()
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fit-params", default=shutil.which("llama-fit-params") or "llama-fit-params")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--model-dir", default="/tmp/kvdeck-shapes")
    ap.add_argument("--budget-s", type=float, default=330)
    ap.add_argument("--loads-of", help="a fit JSON written before: only load its fitted settings")
    a = ap.parse_args()
    if a.loads_of:
        return loads_of(
            Path(a.loads_of), Path(a.out), Path(a.model_dir), set(filter(None, a.shapes.split(",")))
        )
    t0 = time.time()
    out, mdir = Path(a.out), Path(a.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    host = _host()
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "host_available_mib": host.free_bytes // MiB,
        "alloc_probe": alloc_probe(),
        "cases": [],
    }
    path_out = out / f"fit-{res['date']}.json"
    wanted = set(a.shapes.split(",")) if a.shapes else None
    infos: dict[str, Any] = {}
    for shape, budget, n_ctx in CASES:
        if wanted and shape not in wanted:
            continue
        if time.time() - t0 > a.budget_s:
            res.setdefault("skipped", []).append([shape, budget, n_ctx])
            continue
        model = mdir / f"{shape}.gguf"
        if shape not in infos:
            if not model.exists():
                write_sparse_gguf(model, shape)
            infos[shape] = inspect_gguf(model)
        # the margin that leaves the budget of what NVML reads free now; llama-fit-params reads
        # free memory again after creating its CUDA context, and both tools get that reading
        nvml = nvml_free_mib()
        margin = max(0, nvml - budget)
        ref = llama_fit_params(a.fit_params, model, margin, n_ctx)
        free = ref["free_mib"] or nvml
        ours = kvdeck_fit(infos[shape], ref["free_mib"] or free, margin, n_ctx, host)
        case: dict[str, Any] = {
            "shape": shape,
            "budget_mib": budget,
            "n_ctx_given": n_ctx,
            "free_mib_both": ref["free_mib"] or free,
            "margin_mib_both": margin,
            "kvdeck": ours,
            "llama_fit_params": ref,
        }
        usable = (ref["free_mib"] or free) - margin
        _load_all(case, model, usable, infos[shape], host)
        if ref.get("n_ctx") and ref["n_gpu_layers"] is not None and not ref.get("extra_args"):
            plan = analytic_plan(
                infos[shape],
                PlanSettings(n_ctx=ref["n_ctx"], n_gpu_layers=ref["n_gpu_layers"], load_mode="none"),
                [host, Device("CUDA0", "gpu", 143771 * MiB, usable * MiB, reserved_bytes=0)],
            )
            case["kvdeck_plan_of_llama_setting_cuda0_mib"] = round(plan.bytes_for("CUDA0") / MiB, 2)
        res["cases"].append(case)
        print(json.dumps({k: case[k] for k in ("shape", "budget_mib", "n_ctx_given")}), flush=True)
        path_out.write_text(json.dumps(res, indent=1))
    res["total_s"] = round(time.time() - t0, 1)
    path_out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
