"""Speculative decoding on the CPU (issue 5), against llama.cpp's own tools, in one run.

    python benchmarks/spec_cpu.py DRAFT.gguf [--cores 2,4,8,16] [--out DIR]

The targets are the draft dequantized to F16 and F32 (``dequantize_gguf.py``): SmolLM2-135M drafted
by its shipped Q4_1. For each core count (pinned with ``taskset``, CUDA hidden) it runs
``kvdeck bench --draft`` (plain and speculative decoding of the same prompt), llama.cpp's
``llama-bench`` (plain decode) and ``llama-speculative-simple`` (llama.cpp's own speculative loop)
on the same pair, threads and prompt. Results: ``spec-cpu-<date>.json`` in the output folder.
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

from benchmarks.dequantize_gguf import convert  # noqa: E402
from engine.cli.bench import SPEC_PROMPT  # noqa: E402

TG = 128


def _pin(cores: int) -> list[str]:
    return ["taskset", "-c", f"0-{cores - 1}"]


def kvdeck(target: Path, draft: Path, cores: int) -> dict[str, Any]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = _pin(cores) + [
        sys.executable,
        "-m",
        "kvdeck",
        "bench",
        str(target),
        "--draft",
        str(draft),
        "--pp",
        "0",
        "--tg",
        str(TG),
        "--reps",
        "3",
        "--threads",
        str(cores),
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    try:
        d = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"error": (r.stderr or r.stdout)[-400:]}
    s = d["speculative"]
    return {
        "plain": d["plain_tg_tokens_per_s"],
        "spec": d["spec_tg_tokens_per_s"],
        "speedup": d["speedup"],
        "acceptance": d["acceptance"],
        "identical": s["identical"],
        "tokens_per_target_decode": s["tokens_per_target_decode"],
    }


def llama_bench(binary: str, target: Path, cores: int) -> float | None:
    r = subprocess.run(
        _pin(cores)
        + [binary, "-m", str(target), "-p", "0", "-n", str(TG), "-t", str(cores), "-r", "3", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        return round(float(json.loads(r.stdout)[0]["avg_ts"]), 3)
    except (json.JSONDecodeError, IndexError, KeyError):
        return None


def llama_spec(binary: str, target: Path, draft: Path, cores: int, prompt: str) -> dict[str, Any]:
    r = subprocess.run(
        _pin(cores)
        + [
            binary,
            "-m",
            str(target),
            "-md",
            str(draft),
            "-p",
            prompt,
            "-n",
            str(TG),
            "-t",
            str(cores),
            "-td",
            str(cores),
            "--temp",
            "0",
            "-ngl",
            "0",
            "-ngld",
            "0",
            "-c",
            "2048",
            "--spec-type",
            "draft-simple",
            "--spec-draft-n-max",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    out = r.stdout + r.stderr
    speed = re.search(r"decoded\s+\d+ tokens in\s+[\d.]+ seconds, speed:\s*([\d.]+) t/s", out)
    acc = re.search(r"accept\s*=\s*([\d.]+)%", out)
    return {
        "tokens_per_s": float(speed.group(1)) if speed else None,
        "acceptance": float(acc.group(1)) / 100 if acc else None,
        "rc": r.returncode,
        "tail": out[-300:] if not speed else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("draft")
    ap.add_argument("--cores", default="2,4,8,16")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--target-dir", default="/tmp")
    ap.add_argument("--types", default="F16,F32", help="target precisions to write and compare")
    args = ap.parse_args()
    draft = Path(args.draft)
    bench, spec = shutil.which("llama-bench"), shutil.which("llama-speculative-simple")
    prompt = "<|im_start|>user\n" + SPEC_PROMPT + "<|im_end|>\n<|im_start|>assistant\n"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": os.cpu_count(),
        "tg": TG,
        "target": "SmolLM2-135M dequantized from the draft",
        "draft": draft.name,
        "rows": [],
    }
    for ttype, cores in ((t, int(c)) for t in args.types.split(",") for c in args.cores.split(",")):
        if cores > (os.cpu_count() or 1):
            continue
        target = Path(args.target_dir) / f"smollm2-{ttype.lower()}.gguf"
        if not target.exists():
            convert(str(draft), str(target), ttype)
        row = {
            "target": ttype,
            "cores": cores,
            "kvdeck": kvdeck(target, draft, cores),
            "llama_bench_tg": llama_bench(bench, target, cores) if bench else None,
            "llama_speculative_simple": llama_spec(spec, target, draft, cores, prompt) if spec else None,
        }
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"spec-cpu-{res['date']}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
