"""CPU check of self-drafting on tiny random-weight models: greedy identity (8 prompts x 160 tokens)
and acceptance per draft position. Random weights: acceptance is at chance and says nothing about
real models; the speed-up here is Python overhead on a model that costs microseconds per token.

Usage: PYTHONPATH=. python benchmarks/mtp_cpu.py OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.runtime.host import RuntimeHost
from tests.helpers import mtp_models as mm

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
PROMPTS = [" ".join(f"w{(p * 7 + i) % 61}" for i in range(3 + p)) for p in range(8)]


def run(path: Path, settings: PlanSettings, mode: str, assistant: Path | None = None) -> dict:
    same, drafted, accepted, tps_plain, tps_spec = 0, [0] * 8, [0] * 8, [], []
    with RuntimeHost() as host:
        host.load(P.LoadParams(str(path), settings=settings))
        if assistant:
            host.load_draft(str(assistant))
        for prompt in PROMPTS:
            a = host.generate(prompt, max_tokens=160, sampling=GREEDY)
            b = host.generate(prompt, max_tokens=160, sampling=GREEDY, draft=mode, draft_max=4)
            same += a.tokens == b.tokens
            for i, (d, c) in enumerate(zip(b.drafted_at, b.accepted_at)):
                drafted[i] += d
                accepted[i] += c
            tps_plain.append(a.tokens_per_s)
            tps_spec.append(b.tokens_per_s)
    n = max(i + 1 for i, d in enumerate(drafted) if d) if any(drafted) else 0
    return {
        "greedy_identical": f"{same}/{len(PROMPTS)}",
        "drafted_at": drafted[:n],
        "accepted_at": accepted[:n],
        "acceptance": [round(c / d, 4) if d else None for d, c in zip(drafted[:n], accepted[:n])],
        "plain_tokens_per_s": round(sum(tps_plain) / len(tps_plain), 1),
        "drafted_tokens_per_s": round(sum(tps_spec) / len(tps_spec), 1),
    }


def main() -> None:
    d = Path(tempfile.mkdtemp())
    base = dict(n_ctx=512, n_batch=64, n_ubatch=64)
    out = {
        "hy_v3 3 chained heads": run(mm.write_hyv3(d / "h.gguf"), PlanSettings(mtp=True, **base), "mtp"),
        "qwen35 1 head, hybrid, n_rs_seq 4": run(
            mm.write_qwen35(d / "q.gguf"), PlanSettings(mtp=True, n_rs_seq=4, **base), "mtp"
        ),
        "gemma4 + gemma4-assistant (shared KV)": run(
            mm.write_gemma4_target(d / "g.gguf"),
            PlanSettings(**base),
            "model",
            mm.write_gemma4_assistant(d / "a.gguf"),
        ),
    }
    json.dump(out, open(sys.argv[1], "w"), indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
