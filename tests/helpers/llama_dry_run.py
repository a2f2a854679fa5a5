"""Ask llama.cpp (CPU build) what it would allocate, in a child process.

Context creation can abort the process (GGML_ASSERT), so it never runs inside pytest. The child
is this module run as ``python -m tests.helpers.llama_dry_run`` from the repository root: it
loads each model once per batch of jobs with `no_alloc=True` and `load_mode=NONE` (notes §9: the
sizes equal a real run for KV, recurrent, output and compute; weights print 0.00) — or for real
with `real=True`, to measure weights — creates one context per job and prints the captured log
lines as JSON. The parent parses them with `engine.plan.measured`. The child's log capture is
the runtime child's own (`engine.child.native_log.NativeLog`), plus the DEBUG lines that carry
sizes; everything else it does with llama.cpp directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

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

    lines: list[str] = []
    _log = NativeLog(
        lambda _level, line: lines.append(line),  # kept: C holds its callback
        keep_debug=("dev = ", "compute buffer size is", "reserving a graph", "worst-case"),
    )
    LL.llama_backend_init()
    request = json.loads(sys.stdin.read())
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
        )
        lines.clear()
        if key != model_key:
            if model:
                LL.llama_model_free(model)
            mp = LL.llama_model_default_params()
            mp.no_alloc = not job.get("real", False)
            mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
            mp.n_gpu_layers = s["n_gpu_layers"]
            mp.split_mode = _SPLIT[s["split_mode"]]
            mp.main_gpu = s["main_gpu"]
            mp.load_mtp = s.get("mtp", False)  # the MTP (nextn) blocks' tensors
            if s["tensor_split"]:
                arr = (ctypes.c_float * 16)(*s["tensor_split"])
                mp.tensor_split = ctypes.cast(arr, ctypes.POINTER(ctypes.c_float))
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
            cp.n_threads = cp.n_threads_batch = 1
            ctx = LL.llama_init_from_model(model, cp)
            ok = bool(ctx)
            if ctx:
                LL.llama_free(ctx)
        if not model:
            model_key = None
        print(json.dumps({"ok": ok, "lines": load_lines + lines}), flush=True)


@dataclass
class DryRun:
    """One job's outcome: the parsed plan (None when llama.cpp refused) and the raw log."""

    ok: bool
    lines: list[str]
    error: str = ""
    plan: Any = None
    parser: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def dry_run(jobs: list[tuple[str, Any]], real: bool = False, timeout: float = 120.0) -> list[DryRun]:
    """Run [(gguf path, PlanSettings)] in as few child processes as possible.

    A job that aborts the child is reported with the child's stderr tail; the remaining jobs
    continue in a fresh child."""
    from engine.plan.measured import MemoryLogParser

    results: list[DryRun] = []
    pending = list(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GGML_NO_BACKTRACE": "1"}
    while pending:
        payload = {"jobs": [{"path": str(p), "settings": s.to_dict(), "real": real} for p, s in pending]}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.helpers.llama_dry_run"],
            cwd=ROOT,
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        done = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        for (_path, settings), out in zip(pending, done):
            parser = MemoryLogParser()
            for line in out["lines"]:
                parser.feed(line)
            error = "" if out["ok"] else (parser.errors[-1] if parser.errors else "refused")
            results.append(
                DryRun(
                    out["ok"],
                    out["lines"],
                    error,
                    parser.result(settings, "exact") if out["ok"] else None,
                    parser,
                )
            )
        if len(done) < len(pending):  # the child died on pending[len(done)]
            err = proc.stderr.strip().splitlines()
            why = [x for x in err if "GGML_ASSERT" in x or "error" in x.lower()] or err
            results.append(
                DryRun(
                    False,
                    [],
                    " | ".join(why[-2:]) or f"exit {proc.returncode}",
                    extra={"aborted": True, "returncode": proc.returncode},
                )
            )
            pending = pending[len(done) + 1 :]
        else:
            pending = []
    return results


if __name__ == "__main__":
    _child()
