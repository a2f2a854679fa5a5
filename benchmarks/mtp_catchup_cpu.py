"""Per-step time of the batch loop with a model loaded with its MTP heads: what the drafter's
catch-up costs requests that do not draft (and those that do), on the CPU test models.

The server's batch loop used to decode the drafter on every step, for every sequence, drafting
or not; engine.child.selfdraft now defers that catch-up per sequence (a backlog decoded when the
sequence drafts, in its first draft decode, or every BACKLOG rows). Each round here is one burst
of 3 requests x 200 tokens on a 3-sequence context, all arriving together; its per-step time is
the batch loop's own clock (``P.Slots``: seconds in the loop / steps) over that burst; the child's
CPU time per step over all of a variant's rounds is less disturbed by the machine's other work.

Before/after: run this file with the engine of each tree first on ``sys.path`` (it imports
``engine`` from PYTHONPATH, and the child follows the parent's engine), alternating trees between
runs so that the shared machine's load hits both alike:
``cd /tmp && PYTHONPATH=TREE python TREE/benchmarks/mtp_catchup_cpu.py OUT.json [ROUNDS]``. Run it
from outside any tree: the child is started as ``python -m engine.child``, which puts the working
directory first on ``sys.path``, so a child started inside another tree runs that tree's engine.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import psutil

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.runtime.host import RuntimeHost
from tests.helpers import mtp_models as mm
from tests.helpers.burst import held_burst

GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
PROMPTS = [" ".join(f"w{(p * 7 + i) % 61}" for i in range(3 + p)) for p in range(3)]
SLOTS = 3
N_TOKENS = 200  # each: positions up to ~210 of the 256 a sequence holds


class Clock:
    """The batch loop's cumulative counters, from its latest Slots event."""

    def __init__(self) -> None:
        self.last: P.Slots | None = None

    def on_event(self, msg: object) -> None:
        if isinstance(msg, P.Slots):
            self.last = msg

    def read(self) -> tuple[int, float, float]:
        s = self.last
        return (s.steps, s.busy_s, s.decode_s) if s else (0, 0.0, 0.0)


def burst(host: RuntimeHost, clock: Clock, draft: str) -> dict[str, float]:
    """One burst; ms per step in the loop and in the target's decode alone (wall clock)."""
    builds = [
        lambda i, p=p: P.GenerateRequest(
            id=i, prompt=p, max_tokens=N_TOKENS, sampling=GREEDY, serve=True, draft=draft, draft_max=3
        )
        for p in PROMPTS
    ]
    s0, b0, d0 = clock.read()
    _ids, replies, _b = held_burst(host, builds, n_prompt=64)
    assert all(isinstance(d, P.Done) for d in replies), replies
    host.stats()  # a round trip: the loop's closing Slots event has arrived before it
    s1, b1, d1 = clock.read()
    return {
        "step_ms": (b1 - b0) / (s1 - s0) * 1e3,
        "decode_ms": (d1 - d0) / (s1 - s0) * 1e3,
        "steps": s1 - s0,
    }


def measure(path: Path, settings: PlanSettings, rounds: int) -> dict[str, dict]:
    """Non-drafting and drafting bursts with the MTP heads loaded, and non-drafting bursts on
    the same file loaded without them (the floor: no drafter at all). One thread: the per-step
    times are fractions of a millisecond, and a second thread only adds the machine's noise."""
    out: dict[str, dict] = {}
    for mtp, drafts in ((True, ("", "mtp")), (False, ("",))):
        clock = Clock()
        with RuntimeHost(on_event=clock.on_event) as host:
            loaded = host.load(P.LoadParams(str(path), settings=replace(settings, mtp=mtp), n_threads=1))
            assert (loaded.mtp == "ready") == mtp, loaded.mtp
            for draft in drafts:
                burst(host, clock, draft)  # warm-up
                child = psutil.Process(host.pid)
                c0 = sum(child.cpu_times()[:2])
                runs = [burst(host, clock, draft) for _ in range(rounds)]
                cpu = sum(child.cpu_times()[:2]) - c0  # ticks of 10 ms: summed over the rounds
                name = "drafting" if draft else "not drafting" if mtp else "not drafting, no MTP heads loaded"
                out[name] = {k: [round(r[k], 4) for r in runs] for k in ("step_ms", "decode_ms", "steps")}
                out[name]["cpu_ms_per_step"] = round(cpu / sum(r["steps"] for r in runs) * 1e3, 4)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}


def main() -> None:
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    d = Path(tempfile.mkdtemp())
    base = dict(n_ctx=256 * SLOTS, n_seq_max=SLOTS, n_batch=64, n_ubatch=64, mtp=True)
    models = {
        "hy_v3, 3 chained heads": (mm.write_hyv3(d / "h3.gguf"), PlanSettings(**base)),
        "hy_v3, 1 head": (mm.write_hyv3(d / "h1.gguf", n_nextn=1), PlanSettings(**base)),
        "qwen35, 1 head, hybrid": (mm.write_qwen35(d / "q.gguf"), PlanSettings(n_rs_seq=4, **base)),
    }
    out = {name: measure(path, settings, rounds) for name, (path, settings) in models.items()}
    for runs in out.values():
        for r in runs.values():
            r["step_ms_summary"] = summary(r["step_ms"])
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
    print(json.dumps({n: {k: r["step_ms_summary"] for k, r in v.items()} for n, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
