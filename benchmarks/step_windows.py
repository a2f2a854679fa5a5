"""kvdeck's own batch steps inside the windows a benchmark's clients measured.

``server_vs_llama.py --trace`` runs kvdeck with ``KVDECK_STEP_TRACE`` (engine.child.step_trace)
and hands each round's steps here with the round's steady windows (every slot decoding, as the
clients saw it). Both are ``time.perf_counter`` times of one machine, so they line up.

What it answers: whether the steps inside a window are the kind llama-batched-bench times
(generated tokens only, one per sequence) and how far apart they launched, against how long
the window was: time in a window that no step of that kind explains is either another kind of
step (a prefill, a graph rebuild) or a gap between steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.child.step_trace import Step


class TraceFile:
    """The trace file a kvdeck server appends to, read a round at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read_to = 0
        path.unlink(missing_ok=True)

    def new_steps(self) -> list[Step]:
        """The steps written since the last call (each batch run writes its own when it ends)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            f.seek(self.read_to)
            text = f.read()
            self.read_to = f.tell()
        return [Step(*json.loads(line)) for line in text.splitlines() if line.strip()]


def window_steps(steps: list[Step], windows: list[tuple[float, float]], streams: int) -> dict:
    """Per window (clients' clock): its length, the steps that launched inside it by kind, the
    mean launch-to-launch period of its full generated-token steps, and the time the steps
    inside it do not cover; and the whole round's steady t/s as those steps give it."""

    def full(s: Step) -> bool:
        return s.gen_only and s.rows == streams

    out = []
    rows = periods_s = 0.0
    for a, b in windows:
        inside = [s for s in steps if a <= s.t0 < b]
        # each full step's launch to the next step's launch, where the next one is inside too
        periods = [(s, n.t0 - s.t0) for s, n in zip(inside, inside[1:]) if full(s)]
        on_device = sum(max(0.0, min(s.t1, b) - s.t0) for s in inside)
        out.append(
            {
                "window_s": round(b - a, 4),
                "steps": len(inside),
                "full_gen_steps": sum(map(full, inside)),
                "other_steps": [  # launched after the window opened, call, duration, tokens, rows, reused
                    [
                        round(s.t0 - a, 4),
                        round(s.t_call - s.t0, 4),
                        round(s.t1 - s.t0, 4),
                        s.tokens,
                        s.rows,
                        s.reused,
                    ]
                    for s in inside
                    if not full(s)
                ],
                "period_ms": round(1e3 * sum(p for _, p in periods) / len(periods), 3) if periods else None,
                "max_period_ms": round(1e3 * max(p for _, p in periods), 3) if periods else None,
                "not_on_device_s": round(b - a - on_device, 4),
                "graphs_built": sum(1 for s in inside if s.gen_only and not s.reused),
            }
        )
        rows += sum(s.rows for s, _ in periods)
        periods_s += sum(p for _, p in periods)
    return {"windows": out, "server_steady_tps": round(rows / periods_s, 1) if periods_s else None}
