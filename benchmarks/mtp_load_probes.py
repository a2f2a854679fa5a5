"""Load probes for benchmarks/mtp_gpu.py: does a generated GGUF load, each way, in its own process?

Why a module of its own: on the H200 the real load of mtp_gpu.py's file segfaulted inside
llama_model_load_from_file with the default load mode (AUTO), and the team's notes record that
with the CUDA build importing numpy before llama_cpp segfaulted in the same call. A segfault
takes the process with it, so each probe is a fresh ``python mtp_load_probes.py PATH MODE FIRST``
whose llama.cpp log lines reach the parent as they are written: the parent records ``ok`` or
``segfault`` and the last lines before it. This file imports only the standard library at the
top, so a probe imports exactly what it is told to, in that order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

#: (load mode, what is imported first): the order mtp_gpu.py used to load in, and the two changes
PROBES = (("auto", "llama_cpp"), ("auto", "numpy"), ("none", "numpy"))
PROBE_TIMEOUT_S = 120  # three of them must leave most of one 600 s device call
LOG_TAIL = 25


def probe(path: str, mode: str, first: str) -> None:
    """A child process: load ``path`` as the measurement does (MTP heads, every layer offloaded)
    with load mode ``mode``, importing ``first`` first; every llama.cpp log line goes to stderr
    as it is written, so the parent keeps the last ones even when the load segfaults."""
    import faulthandler

    faulthandler.enable()  # the Python stack on SIGSEGV: which call crashed
    if first == "numpy":
        import numpy  # noqa: F401
    import llama_cpp.llama_cpp as LL
    from llama_cpp import _logger

    _logger.set_verbose(True)
    LL.llama_backend_init()
    mp = LL.llama_model_default_params()
    mp.n_gpu_layers, mp.load_mtp, mp.load_mode = 999, True, load_mode(LL, mode)
    t = time.time()
    model = LL.llama_model_load_from_file(os.fsencode(path), mp)
    print(f"PROBE {'loaded' if model else 'refused'} in {time.time() - t:.1f} s", flush=True)
    if model:
        LL.llama_model_free(model)


def load_mode(LL: object, mode: str) -> int:
    return int(getattr(LL, f"LLAMA_LOAD_MODE_{mode.upper()}"))


def run_probes(path: str) -> list[dict]:
    """Each PROBES load in its own process: 'ok', 'segfault', 'refused', 'timeout' or 'exit N'."""
    out = []
    for mode, first in PROBES:
        t = time.time()
        try:
            p = subprocess.run(
                [sys.executable, os.path.abspath(__file__), path, mode, first],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one stream, in the order it was written
                text=True,
                timeout=PROBE_TIMEOUT_S,
            )
            rc, text = p.returncode, p.stdout
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or ""
            rc, text = None, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        if rc is None:
            outcome = "timeout"
        elif rc == -11 or "Segmentation fault" in text:
            outcome = "segfault"
        elif rc == 0:
            outcome = "ok" if "PROBE loaded" in text else "refused"
        else:
            outcome = f"exit {rc}"
        row = {
            "load_mode": mode,
            "imported_first": first,
            "outcome": outcome,
            "returncode": rc,
            "seconds": round(time.time() - t, 1),
            "last_log": [ln for ln in text.splitlines() if ln.strip()][-LOG_TAIL:],
        }
        print("probe", {k: v for k, v in row.items() if k != "last_log"}, flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    probe(*sys.argv[1:4])
