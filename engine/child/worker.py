"""The worker child (``python -m engine.child.worker HOST:PORT``): llama.cpp's RPC server.

It owns llama.cpp like the runtime child does, so a native abort ends only this process. First it
writes one JSON line on stdout, the devices it lends with their memory (or the reason it cannot
serve), then ggml-rpc takes over stdout with its own lines ("Accepted client connection",
"Client connection closed"), which the parent (engine.runtime.worker_process) follows.

Arguments: the endpoint, then ``--device NAME`` (repeatable), ``--cache-dir DIR``,
``--threads N``; the parent validated them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading


def _line(data: dict[str, object]) -> None:
    # straight to fd 1: ggml-rpc's printf buffer must not reorder this first line
    os.write(1, (json.dumps(data) + "\n").encode())


def _exit_with_parent() -> None:
    """The parent holds our stdin open; end of file means it is gone, and a worker nobody
    controls must not keep lending the machine (the server itself never returns)."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    p = argparse.ArgumentParser(prog="engine.child.worker")
    p.add_argument("endpoint")
    p.add_argument("--device", action="append", default=[])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    from engine.child import rpc

    if not rpc.supported():
        _line({"error": "this llama.cpp runtime was built without RPC support (-DGGML_RPC=ON)"})
        return 2
    try:
        devices = rpc.local_devices(args.device)
    except ValueError as exc:
        _line({"error": str(exc)})
        return 2
    if not devices:
        _line({"error": "no device to lend"})
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)  # rpc-server's default
    _line({"devices": rpc.describe(devices), "threads": threads})
    sys.stdout.flush()
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    rpc.start_server(args.endpoint, args.cache_dir, threads, devices)
    return 3  # start_server only returns when it could not listen (its reason is on stderr)


if __name__ == "__main__":
    sys.exit(main())
