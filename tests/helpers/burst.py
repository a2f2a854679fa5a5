"""Requests that reach the child's batch loop together: queued behind a held benchmark.

The child reads its pipe in order, so requests submitted while a benchmark runs are all queued
before the batch loop polls; cancelling the benchmark then lets them in at once (one prefill
step for all of them, every sequence live together).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine import protocol as P

#: Three short ChatML prompts (SmolLM2's template) for a burst of one request per sequence.
CHAT_PROMPTS = [
    "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCount to five.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about rivers.<|im_end|>\n<|im_start|>assistant\n",
]


class Burst:
    """Requests submitted together; collects each one's Started and Done."""

    def __init__(self, n: int) -> None:
        self.started: dict[int, P.Started] = {}
        self.done: dict[int, P.Message] = {}
        #: Every event of each request, in the order the parent received them.
        self.events: dict[int, list[P.Message]] = {}
        self.n = n
        self.all_done = threading.Event()

    def on_event(self, msg: P.Message) -> None:
        self.events.setdefault(getattr(msg, "id", 0), []).append(msg)
        if isinstance(msg, P.Started):
            self.started[msg.id] = msg
        elif isinstance(msg, (P.Done, P.ErrorEvent)):
            self.done[msg.id] = msg
            if len(self.done) == self.n:
                self.all_done.set()


def held_burst(
    host, builds: list[Callable[[int], P.GenerateRequest]], n_prompt: int = 256
) -> tuple[list[int], list[P.Message], Burst]:
    """Submit ``builds`` behind a benchmark of ``n_prompt`` tokens (it must fit the context),
    then cancel it; (request ids, their final messages in order, the burst)."""
    burst = Burst(len(builds))
    held: list[P.Message] = []
    bench = host.submit(
        "bench", lambda i: P.BenchRequest(id=i, n_prompt=n_prompt, n_gen=0, repetitions=10**6), held.append
    )
    ids = [host.submit("generate", build, burst.on_event) for build in builds]
    host.cancel(bench)
    assert burst.all_done.wait(300)
    assert [getattr(m, "kind", None) for m in held] == ["cancelled"]  # it held the queue until then
    return ids, [burst.done[i] for i in ids], burst


def streamed(
    prompt: str, max_tokens: int = 40, stop: list[str] | None = None, sampling: dict | None = None
) -> Callable[[int], P.GenerateRequest]:
    """A streamed serve-style generation of ``prompt`` (greedy unless ``sampling``)."""
    return lambda i: P.GenerateRequest(
        id=i,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=sampling or {"temperature": 0},
        stop=stop or [],
        stream=True,
        serve=True,
    )
