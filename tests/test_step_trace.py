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
from engine.child.step_trace import Step
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
    steps = [Step(*json.loads(line)) for line in trace.read_text().splitlines()]
    tokens = [len(d.tokens) for d in done if isinstance(d, P.Done)]
    assert len(tokens) == 3
    assert sum(s.rows for s in steps) == sum(tokens)  # one sampled row per token of every reply
    gen = [s for s in steps if s.gen_only]
    assert gen and all(s.tokens == s.rows for s in gen)  # generated tokens only: a row per token
    assert steps[0].tokens > steps[0].rows  # the first step prefilled the prompts
    assert all(before < s.t0 <= s.t_call <= s.t1 <= s.t_sampled < after for s in steps)
    # each launched after the step before was sampled, some before its tokens were taken
    assert all(a.t_sampled <= b.t0 for a, b in zip(steps, steps[1:]))
    assert any(s.followed for s in steps)
    assert sum(s.reused for s in gen) >= len(gen) - 3  # a step of the same shape reuses the graph
