"""A step's text is accounted while the device runs the next step (engine.child.batch ``_take``).

On a GPU, llama_decode returns before the device is done, so the batch loop decides only what
the next step needs (end of generation, length, the next token) before it submits that step,
and detokenizes, matches stop strings and streams meanwhile. A reply that meets a stop string
then has its next token in the running step already: that row is dropped. Whether the text
comes before or during the next decode must change nothing a client sees, nor what the cache
keeps for the next request. ``KVDECK_TEXT_DURING_DECODE=1`` makes this CPU machine take the
GPU's path (its decode blocks, so the text only comes later).
"""

from __future__ import annotations

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, held_burst, streamed
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
COLOUR, COUNT, HAIKU = CHAT_PROMPTS


@pytest.fixture(
    scope="module",
    params=[("0", "0"), ("1", "0"), ("1", "1")],
    ids=["before-decode", "during-decode", "during-decode-early-launch"],
)
def host(request, smollm2_path):
    """``KVDECK_EARLY_LAUNCH=1`` also has the next step go before the tokens are taken
    (engine.child.batch.BatchLoop.step; tests/test_batch_early_launch.py)."""
    text, early = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVDECK_TEXT_DURING_DECODE", text)
        mp.setenv("KVDECK_EARLY_LAUNCH", early)
        params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))
        with running_host(params) as (h, _):
            yield h


def test_stop_strings_lengths_and_streams_are_the_same_whenever_the_text_is_accounted(host):
    alone = {p: host.call("generate", streamed(p), timeout=300) for p in (COUNT, HAIKU)}
    full = alone[COUNT].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # met in the middle of the reply
    builds = [streamed(HAIKU), streamed(COUNT, stop=[stop]), streamed(COLOUR, max_tokens=3)]
    ids, (haiku, count, colour), burst = held_burst(host, builds)

    assert isinstance(count, P.Done) and count.stop_reason == "stop"
    assert count.text == full[: full.find(stop)]
    assert isinstance(colour, P.Done) and colour.stop_reason == "length" and len(colour.tokens) == 3
    assert isinstance(haiku, P.Done) and haiku.tokens == alone[HAIKU].tokens
    for i, done in zip(ids, (haiku, count, colour)):
        deltas = [m for m in burst.events[i] if isinstance(m, P.Delta)]
        assert "".join(d.text for d in deltas) == done.text  # never a piece of the stop string
        assert [t for d in deltas for t in d.tokens] == done.tokens


def test_the_cache_a_stopped_reply_leaves_serves_the_next_request_unchanged(host):
    full = host.call("generate", streamed(COUNT), timeout=300)
    stop = full.text[len(full.text) // 3 : len(full.text) // 3 + 2]
    stopped = host.call("generate", streamed(COUNT, stop=[stop]), timeout=300)
    again = host.call("generate", streamed(COUNT), timeout=300)
    assert isinstance(stopped, P.Done) and stopped.stop_reason == "stop"
    assert isinstance(again, P.Done) and again.n_reused > 0
    assert again.tokens == full.tokens
