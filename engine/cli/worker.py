"""``kvdeck worker``: lend this machine's devices to KV Deck (or llama.cpp) on another machine.

It runs llama.cpp's own RPC server (engine.child.worker, through engine.runtime.worker_process),
prints the endpoint and the devices with their memory, then a line per client that connects or
disconnects (ggml-rpc prints both, without the address; engine.runtime.worker_process adds it),
and serves until Ctrl+C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from engine.core.units import format_bytes
from engine.runtime.workers import DEFAULT_PORT


def register(sub: Any) -> None:
    w = sub.add_parser(
        "worker",
        help="lend this machine's GPU (or CPU) to KV Deck on another machine (llama.cpp RPC server)",
    )
    w.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    w.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    w.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="lend only this device (e.g. CUDA0; repeat for more); default: every GPU, else the CPU",
    )
    w.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="keep received weights here to skip re-sending"
    )
    w.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: half the cores, as rpc-server)"
    )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _client_event(peer: str, connected: bool) -> None:
    """One line per client that connects or leaves (ggml-rpc serves one at a time)."""
    stamp = time.strftime("%H:%M:%S")
    who = f"client {peer}" if peer else "a client (gone before it could be named)"
    print(f"{stamp} {who} {'connected' if connected else 'disconnected'}", flush=True)


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.runtime.worker_process import WorkerProcess, exposure_warning

    devices = [d for part in args.device for d in part.split(",") if d.strip()]
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    worker = WorkerProcess(args.host, args.port, devices, args.cache_dir, args.threads, _client_event)
    worker.start()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends it as cleanly as Ctrl+C
    try:
        print(f"worker listening on {worker.endpoint} (llama.cpp RPC, {worker.threads} threads)")
        for d in worker.devices:
            print(
                f"  {d.name}: {d.description}, {format_bytes(d.free_bytes)} free of {format_bytes(d.total_bytes)}"
            )
        if args.cache_dir:
            print(f"  tensor cache: {args.cache_dir} (weights sent once are read from here next time)")
        print(f"use it with: kvdeck chat MODEL.gguf --rpc {worker.endpoint}   (Ctrl+C stops the worker)")
        sys.stdout.flush()
        code = worker.wait()
    except KeyboardInterrupt:  # Ctrl+C is how a worker is meant to end
        worker.stop()
        print("worker stopped", file=sys.stderr)
        return 0
    finally:
        worker.stop()
    print(f"the worker ended by itself (exit status {code})", file=sys.stderr)
    return 2
