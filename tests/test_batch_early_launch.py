"""The next step goes to the device before this step's tokens are taken (engine.child.batch).

On a GPU, llama_decode returns before the device is done. When every row of a step of generated
tokens goes on (not an end of generation, not a last token, no log-probabilities, no drafts),
the loop writes the sampled tokens into the batch and launches the next step at once; the
tokens' replies, their text and the requests' side of the loop follow while the device runs.
What a client gets must not change, nor what the cache keeps: a reply that meets a stop string
in that text, or is cancelled, has a row in the running step, which is dropped. (Stop strings
and the cache they leave: tests/test_batch_text_during_decode.py, with this path as one of its
modes.) ``KVDECK_EARLY_LAUNCH=1`` makes this CPU machine take that path (its decode blocks).
"""

from __future__ import annotations

import threading

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, Burst, held_burst, streamed
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
COLOUR, COUNT, HAIKU = CHAT_PROMPTS
SEEDED = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 11}


@pytest.fixture(scope="module", params=["0", "1"], ids=["after-take", "early"])
def host(request, smollm2_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVDECK_EARLY_LAUNCH", request.param)
        mp.setenv("KVDECK_TEXT_DURING_DECODE", "1")  # the GPU's path for the text too
        params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))
        slots: list[P.Message] = []
        with running_host(params, on_event=slots.append) as (h, _):
            yield h, request.param, slots


def _followed(slots: list[P.Message]) -> int:
    return max((s.followed for s in slots if isinstance(s, P.Slots)), default=0)


def test_replies_streams_and_stop_reasons_are_the_same_with_steps_launched_early(host):
    h, mode, slots = host
    alone = {p: h.call("generate", streamed(p), timeout=300) for p in (COUNT, HAIKU)}
    seeded = h.call("generate", streamed(HAIKU, sampling=SEEDED), timeout=300)
    full = alone[COUNT].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # met in the middle of the reply
    builds = [
        streamed(HAIKU, sampling=SEEDED),
        streamed(COUNT, stop=[stop]),
        streamed(COLOUR, max_tokens=5),
    ]
    ids, (haiku, count, colour), burst = held_burst(h, builds)

    assert isinstance(count, P.Done) and count.stop_reason == "stop"
    assert count.text == full[: full.find(stop)]
    assert isinstance(colour, P.Done) and colour.stop_reason == "length" and len(colour.tokens) == 5
    assert isinstance(haiku, P.Done) and haiku.tokens == seeded.tokens
    for i, done in zip(ids, (haiku, count, colour)):
        deltas = [m for m in burst.events[i] if isinstance(m, P.Delta)]
        assert "".join(d.text for d in deltas) == done.text
        assert [t for d in deltas for t in d.tokens] == done.tokens
    # steps of generated tokens whose rows all went on were launched early (and none with "0")
    assert (_followed(slots) > 20) if mode == "1" else _followed(slots) == 0


def test_a_reply_cancelled_mid_stream_leaves_the_other_and_the_cache_right(host):
    h, _, _ = host
    alone = h.call("generate", streamed(HAIKU, max_tokens=60), timeout=300)
    count = h.call("generate", streamed(COUNT, max_tokens=30), timeout=300)
    burst = Burst(2)
    streaming = threading.Event()

    def on_event(msg: P.Message) -> None:
        burst.on_event(msg)
        if msg.id == long and sum(len(d.tokens) for d in burst.events[long] if isinstance(d, P.Delta)) >= 5:
            streaming.set()  # both replies are well under way

    long = 0
    long = h.submit("generate", streamed(COUNT, max_tokens=400), on_event)
    haiku = h.submit("generate", streamed(HAIKU, max_tokens=60), on_event)
    assert streaming.wait(300)
    h.cancel(long)
    assert burst.all_done.wait(300)
    cancelled = burst.done[long]
    assert (
        isinstance(cancelled, P.Done) and cancelled.stop_reason == "cancelled" and len(cancelled.tokens) >= 5
    )
    assert isinstance(burst.done[haiku], P.Done) and burst.done[haiku].tokens == alone.tokens
    again = h.call("generate", streamed(COUNT, max_tokens=30), timeout=300)  # on what it left
    assert isinstance(again, P.Done) and again.n_reused > 0 and again.tokens == count.tokens
