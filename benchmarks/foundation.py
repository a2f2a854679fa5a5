"""Foundation figures in one run: cold start, load, first token, decode speed vs llama-bench.

    python benchmarks/foundation.py [--model PATH] [--llama-bench PATH] [--threads N] [--out FILE]

Decode speed is compared with llama.cpp's own ``llama-bench -p 0 -n 128`` on the same file and
thread count, in the same run, so the ratio is meaningful even on a noisy machine. Cold start is
the app's own log line ("first model ready ... after process start"), with the window shown on
the offscreen Qt platform.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def kvdeck_chat(model: str, threads: int, n: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvdeck",
            "chat",
            model,
            "--prompt",
            "Write a long story about a lighthouse keeper.",
            "--max-tokens",
            str(n),
            "--temperature",
            "0",
            "--repeat-penalty",
            "1.0",
            "--threads",
            str(threads),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(out.stdout)


def llama_bench(binary: str, model: str, threads: int, n: int) -> float:
    out = subprocess.run(
        [binary, "-m", model, "-p", "0", "-n", str(n), "-t", str(threads), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def _logged_at(text: str, pattern: str) -> float | None:
    """The wall-clock time (epoch seconds) of the log line matching ``pattern``, from its stamp."""
    m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*" + pattern, text, re.M)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def cold_start(model: str, timeout: float = 300) -> dict:
    """The app's own figures (seconds after its process started, by the kernel's clock) and, as a
    check on them, the same events timed from here: from just before the process is spawned to
    the log line's time stamp (millisecond stamps)."""
    data = tempfile.mkdtemp(prefix="kvdeck-bench-")
    env = dict(os.environ, KVDECK_DATA_DIR=data, KVDECK_DEMO_MODEL=model, QT_QPA_PLATFORM="offscreen")
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvdeck"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = Path(data) / "kvdeck.log"
    found: dict[str, float] = {}
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and "model_ready_s" not in found:
            time.sleep(0.1)
            text = log.read_text() if log.exists() else ""
            if m := re.search(r"window shown ([\d.]+) s", text):
                found["window_shown_s"] = float(m.group(1))
            if m := re.search(r"first model ready ([\d.]+) s after process start \(load ([\d.]+) s\)", text):
                found["model_ready_s"] = float(m.group(1))
                found["load_in_app_s"] = float(m.group(2))
                for key, pattern in (
                    ("window_shown_wall_s", "window shown"),
                    ("model_ready_wall_s", "first model"),
                ):
                    if (at := _logged_at(text, pattern)) is not None:
                        found[key] = round(at - spawned, 3)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    return found


def main() -> int:
    from engine.core.paths import demo_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(demo_model_path() or ""))
    ap.add_argument("--llama-bench", default=shutil.which("llama-bench") or "")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "foundation-cpu.json"))
    ap.add_argument("--cold-start-only", action="store_true", help="print the cold-start runs as JSON lines")
    args = ap.parse_args()
    if args.cold_start_only:
        for _ in range(args.repeats):
            print(json.dumps({"load_avg_1min": os.getloadavg()[0], **cold_start(args.model)}), flush=True)
        return 0

    import llama_cpp

    runs = [kvdeck_chat(args.model, args.threads, args.tokens) for _ in range(args.repeats)]
    bench = (
        [llama_bench(args.llama_bench, args.model, args.threads, args.tokens) for _ in range(args.repeats)]
        if args.llama_bench
        else []
    )
    starts = [cold_start(args.model) for _ in range(args.repeats)]
    tps = statistics.median(r["tokens_per_s"] for r in runs)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "llama_cpp_python": llama_cpp.__version__,
        "model": Path(args.model).name,
        "threads": args.threads,
        "kvdeck_tg_tokens_per_s": round(tps, 2),
        "kvdeck_tokens_generated": [r["n_tokens"] for r in runs],
        "llama_bench_tg128_tokens_per_s": round(statistics.median(bench), 2) if bench else None,
        "tg_ratio": round(tps / statistics.median(bench), 4) if bench else None,
        "load_s": round(statistics.median(r["load_s"] for r in runs), 3),
        "first_token_s": round(statistics.median(r["first_token_s"] for r in runs), 3),
        "cold_start_window_s": round(
            statistics.median(s.get("window_shown_s", float("nan")) for s in starts), 2
        ),
        "cold_start_model_ready_s": round(
            statistics.median(s.get("model_ready_s", float("nan")) for s in starts), 2
        ),
        "raw": {"kvdeck": [r["tokens_per_s"] for r in runs], "llama_bench": bench, "cold_start": starts},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
