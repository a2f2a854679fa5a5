"""Ask llama.cpp what it would allocate, in a child process: the dry run tests and benchmarks share.

Context creation can abort the process (GGML_ASSERT), so it never runs inside pytest or a
benchmark's own process. The child is this module run as ``python -m tools.llama_dry_run`` from
the repository root: it loads each model once per batch of jobs with `no_alloc=True` and
`load_mode=NONE` (notes §9: the sizes equal a real run for KV, recurrent, output and compute;
weights print 0.00) — or for real with ``"real": true``, to measure weights, in the settings'
``load_mode`` (mmap: the host's weights are the mapped file's span) — creates one context
per job and prints one JSON line per job: whether llama.cpp accepted it, the seconds it took, the
model load's log lines and the context's. The child's log capture is the runtime child's own
(`engine.child.native_log.NativeLog`), plus the DEBUG lines that hold one of ``keep_debug``;
everything else it does with llama.cpp directly.

Callers: `tests/helpers/llama_dry_run.py` (parses the lines with `engine.plan.measured`) and
`benchmarks/gpu_compute.py` (CUDA compute buffers of real model shapes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_GGML_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
_FA = {"auto": -1, "off": 0, "on": 1}
_SPLIT = {"none": 0, "layer": 1, "row": 2, "tensor": 3}


def _child() -> None:  # pragma: no cover - runs in the child process
    import ctypes

    import llama_cpp.llama_cpp as LL

    from engine.child.native_log import NativeLog
    from engine.child.overrides import set_cpu_moe

    request = json.loads(sys.stdin.read())
    lines: list[str] = []
    _log = NativeLog(  # kept in a variable: C holds its callback
        lambda _level, line: lines.append(line), keep_debug=tuple(request["keep_debug"])
    )
    LL.llama_backend_init()
    model, model_key, load_lines = None, None, []
    for job in request["jobs"]:
        s = job["settings"]
        key = (
            job["path"],
            job.get("real", False),
            s["n_gpu_layers"],
            s["split_mode"],
            s["main_gpu"],
            tuple(s["tensor_split"]),
            s.get("mtp", False),
            s.get("n_cpu_moe", 0),
            s.get("load_mode", "none"),
        )
        lines.clear()
        t0 = time.time()
        if key != model_key:
            if model:
                LL.llama_model_free(model)
            mp = LL.llama_model_default_params()
            mp.no_alloc = not job.get("real", False)
            mmap = job.get("real", False) and s.get("load_mode", "none") == "mmap"
            mp.load_mode = LL.LLAMA_LOAD_MODE_MMAP if mmap else LL.LLAMA_LOAD_MODE_NONE
            mp.n_gpu_layers = s["n_gpu_layers"]
            mp.split_mode = _SPLIT[s["split_mode"]]
            mp.main_gpu = s["main_gpu"]
            mp.load_mtp = s.get("mtp", False)  # the MTP (nextn) blocks' tensors
            if s["tensor_split"]:
                arr = (ctypes.c_float * 16)(*s["tensor_split"])
                mp.tensor_split = ctypes.cast(arr, ctypes.POINTER(ctypes.c_float))
            keep = set_cpu_moe(mp, s.get("n_cpu_moe", 0))  # noqa: F841 - outlives the load
            model = LL.llama_model_load_from_file(job["path"].encode(), mp)
            model_key, load_lines = key, list(lines)  # repeated for every job of this model
            lines.clear()
        ok = False
        if model:
            cp = LL.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch = s["n_ctx"], s["n_batch"], s["n_ubatch"]
            cp.n_seq_max, cp.n_rs_seq = s["n_seq_max"], s["n_rs_seq"]
            cp.type_k, cp.type_v = _GGML_TYPES[s["type_k"]], _GGML_TYPES[s["type_v"]]
            cp.flash_attn_type = _FA[s["flash_attn"]]
            cp.swa_full, cp.kv_unified = s["swa_full"], s["kv_unified"]
            cp.offload_kqv = s["offload_kqv"]
            cp.n_threads = cp.n_threads_batch = request["threads"]
            ctx = LL.llama_init_from_model(model, cp)
            ok = bool(ctx)
            if ctx:
                LL.llama_free(ctx)
        if not model:
            model_key = None
        out = {"ok": ok, "s": time.time() - t0, "load_lines": load_lines, "lines": list(lines)}
        print(json.dumps(out), flush=True)


def run_jobs(
    jobs: Sequence[dict[str, Any]],
    keep_debug: Sequence[str],
    *,
    threads: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Run jobs ``{"path", "settings": PlanSettings.to_dict(), "real"?}`` in as few child
    processes as possible; one result per job (see the module docstring).

    A job that kills the child is reported as ``{"ok": False, "died": <stderr tail>,
    "returncode": N}``; the remaining jobs continue in a fresh child."""
    out: list[dict[str, Any]] = []
    pending = list(jobs)
    e = {**os.environ, "GGML_NO_BACKTRACE": "1", **(env or {})}
    while pending:
        request = {"jobs": pending, "keep_debug": list(keep_debug), "threads": threads}
        proc = subprocess.run(
            [sys.executable, "-m", "tools.llama_dry_run"],
            cwd=ROOT,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=e,
        )
        done = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        out += done
        if len(done) < len(pending):  # the child died on pending[len(done)]
            died = {"ok": False, "load_lines": [], "lines": [], "returncode": proc.returncode}
            out.append({**died, "died": proc.stderr[-4000:]})
            pending = pending[len(done) + 1 :]
        else:
            pending = []
    return out


if __name__ == "__main__":
    _child()
