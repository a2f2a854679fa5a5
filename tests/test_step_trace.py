"""The batch loop's step trace (engine.child.step_trace, ``KVDECK_STEP_TRACE=FILE``).

A benchmark lines kvdeck's own steps up with what its clients saw, so the trace must hold every
step of a run, on the clock the benchmark reads (``time.perf_counter``, one clock for every
process of a machine), with the tokens and rows that went into it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, held_burst
from tests.helpers.runtime_host import running_host


@pytest.mark.slow
def test_every_step_of_a_run_is_traced_on_the_clients_clock(smollm2_path, monkeypatch, tmp_path) -> None:
    trace = tmp_path / "steps.jsonl"
    monkeypatch.setenv("KVDECK_STEP_TRACE", str(trace))
    monkeypatch.setenv("KVDECK_EARLY_LAUNCH", "1")  # a GPU's steps, some launched before the last is taken
    params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))

    def build(prompt: str) -> Callable[[int], P.GenerateRequest]:
        return lambda i: P.GenerateRequest(
            id=i, prompt=prompt, max_tokens=12, sampling={"temperature": 0}, serve=True
        )

    with running_host(params) as (h, _):
        before = time.perf_counter()
        _, done, _ = held_burst(h, [build(p) for p in CHAT_PROMPTS])
        after = time.perf_counter()
    # the host has stopped: the run that served the burst has written its steps
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    tokens = [len(d.tokens) for d in done if isinstance(d, P.Done)]
    assert len(tokens) == 3
    assert sum(s[4] for s in steps) == sum(tokens)  # one sampled row per token of every reply
    gen = [s for s in steps if s[5]]
    assert gen and all(s[3] == s[4] for s in gen)  # generated tokens only: a row per token
    assert steps[0][3] > steps[0][4]  # the first step prefilled the prompts
    assert all(before < s[0] <= s[1] <= s[2] < after for s in steps)
    assert all(a[2] <= b[0] for a, b in zip(steps, steps[1:]))  # each launched after the last was sampled
    assert any(s[6] for s in steps)  # and some before the last one's tokens were taken
