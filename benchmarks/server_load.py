"""Bounded load test of ``kvdeck serve``: 1, 4 and 16 concurrent streaming clients on 127.0.0.1.

    python benchmarks/server_load.py [--model PATH] [--parallel 16] [--clients 1,4,16]
                                     [--requests 2] [--max-tokens 64] [--threads 0] [--out FILE]

The server is the real CLI (``kvdeck serve``, its own runtime child), the clients are threads
speaking plain HTTP with server-sent events (benchmarks/sse_clients.py), so the figures include everything a real client
sees: JSON, SSE, the IPC to the child and continuous batching. Per round: throughput (all
generated tokens / wall time of the round), first-token latency (request sent → first text
chunk; median and p95), and the runtime child's RSS before the first round, at its peak and
after the last. Bounded: every client sends ``--requests`` requests of at most ``--max-tokens``
tokens, so a round ends however slow the machine is. The load average is recorded too: on a
shared machine, compare rounds of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sse_clients import TIMEOUT_S, fan_out, stream  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how rain forms, in detail.",
    "Describe a busy market in a port city.",
    "Write a letter to a friend about a journey.",
    "Tell the history of the bicycle.",
    "Describe how bread is baked, step by step.",
]


def start_server(
    model: str, parallel: int, ctx: int | None, threads: int, extra: list[str]
) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "kvdeck",
        "serve",
        model,
        "--port",
        "0",
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
        "--queue",
        "64",
        *extra,
    ]
    if ctx:
        cmd += ["--ctx", str(ctx)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split(" at ", 1)[1].split()[0]


def runtime_child(proc: subprocess.Popen) -> psutil.Process:
    for _ in range(50):
        kids = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "engine.child" in " ".join(p.cmdline())
        ]
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise SystemExit("no runtime child found")


def one_request(url: str, model: str, i: int, max_tokens: int, http: httpx.Client | None = None) -> dict:
    if http is None:
        with httpx.Client(timeout=TIMEOUT_S) as own:
            return one_request(url, model, i, max_tokens, own)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
    }
    r = stream(http, f"{url}/chat/completions", body)
    if not r["ok"]:
        return r
    return {
        "ok": True,
        "ttft_s": None if r["first"] is None else r["first"] - r["t0"],
        "tokens": r["usage"].get("completion_tokens", 0),
        "total_s": r["end"] - r["t0"],
    }


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def run_round(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    load0 = os.getloadavg()[0]
    results, wall = fan_out(
        clients, requests, lambda http, c, k: one_request(url, model, c * requests + k, max_tokens, http)
    )
    ok = [r for r in results if r["ok"]]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "per_client_tokens_per_s": round(statistics.mean(r["tokens"] / r["total_s"] for r in ok), 2),
        "ttft_median_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(p95(ttfts), 3),
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: the demo model)")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=None, help="total context (default: 1024 per sequence)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--serve-args", default="", help="more options for kvdeck serve, e.g. '--n-gpu-layers 0'")
    ap.add_argument("--label", default="", help="a note stored with the results (machine, build)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from engine.core import paths

    model = args.model or str(paths.demo_model_path() or "")
    if not model:
        raise SystemExit("no model: pass --model or install the demo model")
    proc, url = start_server(
        model, args.parallel, args.ctx or 1024 * args.parallel, args.threads, args.serve_args.split()
    )
    url += "" if url.endswith("/v1") else "/v1"
    child = runtime_child(proc)
    peak = [child.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            try:
                peak[0] = max(peak[0], child.memory_info().rss)
            except psutil.Error:
                return

    try:
        name = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]
        one_request(url, name, 0, 4)  # warm-up: first decode, page cache
        rss_before = child.memory_info().rss
        peak[0] = rss_before
        threading.Thread(target=sample, daemon=True).start()
        rounds = []
        for n in (int(x) for x in args.clients.split(",")):
            rounds.append(run_round(url, name, n, args.requests, args.max_tokens))
            print(json.dumps(rounds[-1]), flush=True)
        rss_after = child.memory_info().rss
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
    out = {
        "date": dt.date.today().isoformat(),
        "model": Path(model).name,
        "parallel": args.parallel,
        "ctx_total": args.ctx or 1024 * args.parallel,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests,
        "threads": args.threads or psutil.cpu_count(logical=False),
        "serve_args": args.serve_args,
        "label": args.label,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_logical": os.cpu_count(),
            "cores_physical": psutil.cpu_count(logical=False),
            "python": platform.python_version(),
        },
        "rounds": rounds,
        "runtime_rss_mib": {
            "before": round(rss_before / 2**20, 1),
            "peak": round(peak[0] / 2**20, 1),
            "after": round(rss_after / 2**20, 1),
        },
    }
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"server-{out['date']}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
