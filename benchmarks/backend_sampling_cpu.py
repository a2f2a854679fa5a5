"""Per-step sampling time of the batch loop, CPU chains vs device chains (CPU backend).

    python benchmarks/backend_sampling_cpu.py MODEL.gguf [--slots 4] [--tokens 64] [--reps 3]

One runtime child per mode (``KVDECK_BACKEND_SAMPLING`` 0 and 1), each running ``--reps`` bursts
of ``--slots`` requests with the server's default sampling (``API_DEFAULTS``, llama-server's:
top-k 40, top-p 0.95, min-p 0.05, temperature 0.8, no repeat penalty, random seed; the 2026-12-04
result was taken with the Balanced preset's temperature 0.7 and repeat penalty 1.1) and greedy,
read from the Slots event's batch-loop totals (engine.child.batch_sample.LoopTimes): ms per
step in llama_decode and in sampling. With device chains the sampling itself runs inside llama_decode, so both columns
count: their sum is what a step costs. On a shared CPU the decode figure is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import protocol as P  # noqa: E402
from engine.core.memory_types import PlanSettings  # noqa: E402
from engine.core.sampling import API_DEFAULTS  # noqa: E402
from engine.runtime.host import RuntimeHost  # noqa: E402
from tests.helpers.burst import held_burst  # noqa: E402

PROMPT = "<|im_start|>user\nTell me about rivers, number {i}.<|im_end|>\n<|im_start|>assistant\n"
SAMPLINGS = {"server-default": API_DEFAULTS.to_dict(), "greedy": {"temperature": 0}}


def measure(model: str, backend: bool, args: argparse.Namespace) -> dict:
    slots: list[P.Slots] = []
    env = {**os.environ, "KVDECK_BACKEND_SAMPLING": "1" if backend else "0"}
    out = {}
    with RuntimeHost(env=env, on_event=lambda m: slots.append(m) if isinstance(m, P.Slots) else None) as host:
        host.load(
            P.LoadParams(path=model, settings=PlanSettings(n_ctx=512 * args.slots, n_seq_max=args.slots))
        )
        for name, sampling in SAMPLINGS.items():
            before = slots[-1] if slots else None
            for _ in range(args.reps):
                builds = [
                    lambda i, k=k, s=sampling: P.GenerateRequest(
                        id=i, prompt=PROMPT.format(i=k), max_tokens=args.tokens, sampling=s, serve=True
                    )
                    for k in range(args.slots)
                ]
                held_burst(host, builds)
            after = slots[-1]
            steps = after.steps - (before.steps if before else 0)
            dec = after.decode_s - (before.decode_s if before else 0.0)
            smp = after.sample_s - (before.sample_s if before else 0.0)
            out[name] = {
                "steps": steps,
                "decode_ms_per_step": round(dec / steps * 1e3, 3),
                "sample_ms_per_step": round(smp / steps * 1e3, 3),
                "step_ms": round((dec + smp) / steps * 1e3, 3),
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    res = {
        "model": Path(args.model).name,
        "slots": args.slots,
        "tokens": args.tokens,
        "reps": args.reps,
        "cpu_chains": measure(args.model, False, args),
        "device_chains": measure(args.model, True, args),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
