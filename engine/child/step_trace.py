"""Every batch step's times, written to a file for benchmarks (``KVDECK_STEP_TRACE=FILE``).

Why: the loop's totals (engine.child.batch_sample.LoopTimes) say how long an average step
took, not which steps fell inside the span a client measured. At 64 clients on 16 sequences
the clients saw about 0.35 ms more per token than the totals' decode + relaunch
(benchmarks/results/server-2026-12-05-h200-cut.json), where at 16 clients both agreed;
only the steps' own times, on the clients' clock, can say where that went.

Off unless the variable is set. Each run of the batch loop appends one JSON line per step
when it closes: ``[t0, t_call, t1, t_sampled, tokens, rows, gen_only, reused, followed]``, times in
``time.perf_counter`` seconds (CLOCK_MONOTONIC on Linux, the clock every process here
reads, so a benchmark's own ``perf_counter`` times compare directly): the launch, llama_decode
returning (before the device is done on a GPU, where the step is one ubatch with a reused graph:
engine.child.batch_rows.returns_at_once), the device done,
the rows sampled; the step's tokens and sampled rows; whether it held generated tokens
only (batched-bench's kind of step); how many of its ubatches reused the graph before
(llama.cpp's ``n_reused``: a graph built again costs the CPU time of building it, before the
device starts); whether the next step launched before this one's tokens were taken
(engine.child.batch.BatchLoop.step).
"""

from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple

import llama_cpp.llama_cpp as LL

log = logging.getLogger(__name__)

#: The file each run's steps are appended to; None: no trace (the default).
PATH = os.environ.get("KVDECK_STEP_TRACE") or None


class Step(NamedTuple):
    """One line of the trace (``Step(*json.loads(line))``)."""

    t0: float  # launched
    t_call: float  # llama_decode returned
    t1: float  # the device done
    t_sampled: float  # its rows sampled
    tokens: int
    rows: int
    gen_only: bool  # generated tokens only, one a row: llama-batched-bench's kind of step
    reused: int  # its ubatches whose graph llama.cpp reused
    followed: bool  # the next step launched before this one's tokens were taken


class StepTrace:
    """One batch run's steps (nothing is kept when no trace was asked for)."""

    def __init__(self, ctx: object) -> None:
        self.ctx = ctx
        self.steps: list[Step] = []
        self.reused = self._reused()

    def _reused(self) -> int:
        return int(LL.llama_perf_context(self.ctx).n_reused) if PATH is not None else 0

    def step(
        self, times: tuple[float, float, float, float], tokens: int, rows: int, gen_only: bool, followed: bool
    ) -> None:
        """``times``: launched, llama_decode returned, the device done, sampled."""
        if PATH is not None:
            before, self.reused = self.reused, self._reused()
            self.steps.append(Step(*times, tokens, rows, gen_only, self.reused - before, followed))

    def write(self) -> None:
        """Append the run's steps to the file; a file that cannot be written is a warning."""
        if PATH is None or not self.steps:
            return
        try:
            with open(PATH, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(s) + "\n" for s in self.steps)
        except OSError as exc:
            log.warning("KVDECK_STEP_TRACE not written: %s", exc)
        self.steps.clear()
