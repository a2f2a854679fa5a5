"""Busy sequences stay one run of ids (engine.child.batch, ``_close_gaps``).

With a KV stream per sequence, llama.cpp computes a step in one ubatch per run of consecutive
sequence ids, each reading all the weights. When a request in the middle ends and nobody waits
to take its sequence, the highest busy sequence moves into it: llama.cpp copies the whole stream
at the next decode. The moved request's reply must not change.
"""

from __future__ import annotations

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, held_burst
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
COLOUR, COUNT, HAIKU = CHAT_PROMPTS


def _generate(prompt: str, max_tokens: int):
    return lambda i: P.GenerateRequest(
        id=i, prompt=prompt, max_tokens=max_tokens, sampling={"temperature": 0}, serve=True
    )


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_a_gap_left_by_a_short_reply_is_closed_and_the_moved_reply_is_unchanged(model, request):
    """SmolLM2, and Gemma 3 (whose sliding-window layers have a second cache, copied too)."""
    path = request.getfixturevalue(model)
    slots: list[list[int]] = []

    def on_event(msg: P.Message) -> None:
        if isinstance(msg, P.Slots):
            slots.append(list(msg.requests))

    params = P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))
    with running_host(params, on_event=on_event) as (host, _):
        alone = host.call("generate", _generate(COUNT, 40), timeout=300)
        builds = [_generate(HAIKU, 40), _generate(COLOUR, 2), _generate(COUNT, 40)]
        (a, b, c), (done_a, done_b, done_c), _ = held_burst(host, builds)
    assert [a, b, c] in slots  # sequences 0, 1, 2 in order of arrival
    assert isinstance(done_b, P.Done) and len(done_b.tokens) <= 2
    assert [a, c, 0] in slots  # after the short reply: the last request moved down into its sequence
    assert isinstance(done_c, P.Done) and isinstance(alone, P.Done)
    assert done_c.tokens == alone.tokens
