"""The child's continuous-batching loop (engine.child.batch) with SmolLM2 in a real runtime child.

Prompts that wait together are prefilled together: one decode step ends all their prefills
(``Started.step``), so the time to first token of a burst of clients is one prefill, not one
per client. Sampling the rows of a step in parallel (engine.child.batch_sample) must not change
what anyone gets: greedy and seeded replies are the same token for token as one at a time.
"""

from __future__ import annotations

import os
import threading

import pytest

from engine import protocol as P
from engine.child.io import EventWriter
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, Burst, held_burst
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
SLOTS = 3
PROMPTS = CHAT_PROMPTS
GREEDY = {"temperature": 0}
SEEDED = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7}


def _generate(i: int, prompt: str, sampling: dict) -> P.GenerateRequest:
    return P.GenerateRequest(id=i, prompt=prompt, max_tokens=24, sampling=sampling, serve=True)


def _burst(host, sampling: dict) -> tuple[list[int], list[list[int]], Burst]:
    """Every prompt at once (queued behind a held benchmark, tests.helpers.burst)."""
    ids, replies, burst = held_burst(host, [lambda i, p=p: _generate(i, p, sampling) for p in PROMPTS])
    assert all(isinstance(d, P.Done) for d in replies), replies
    return ids, [d.tokens for d in replies], burst  # type: ignore[union-attr]


def _one_by_one(host, sampling: dict) -> list[list[int]]:
    out = []
    for p in PROMPTS:
        done = host.call("generate", lambda i, p=p: _generate(i, p, sampling), timeout=300)
        assert isinstance(done, P.Done)
        out.append(done.tokens)
    return out


def _params(path) -> P.LoadParams:
    return P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=512 * SLOTS, n_seq_max=SLOTS))


@pytest.fixture(scope="module")
def host(smollm2_path):
    with running_host(_params(smollm2_path)) as (host, _loaded):
        yield host


@pytest.fixture
def empty_host(smollm2_path):
    """A runtime whose sequences hold nothing yet: where requests land then depends on them
    alone, not on what the module's earlier tests left in which sequence."""
    with running_host(_params(smollm2_path)) as (host, _loaded):
        yield host


def test_prompts_that_wait_together_are_prefilled_in_one_step(host):
    ids, _, burst = _burst(host, GREEDY)
    steps = {burst.started[i].step for i in ids}
    assert len(steps) == 1 and steps.pop() > 0


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_replies_in_a_batch_equal_replies_one_at_a_time(host, sampling):
    _, together, _ = _burst(host, sampling)
    alone = _one_by_one(host, sampling)
    assert together == alone
    assert all(together)


def test_streamed_text_of_every_sequence_arrives_in_order_and_adds_up_to_the_reply(host):
    """A step's events go to the parent in one write (engine.child.io.EventWriter.held): each
    request still sees Started, then its deltas, then Done, and the deltas add up to the reply."""
    ids, replies, burst = held_burst(
        host, [lambda i, p=p: P.GenerateRequest(id=i, prompt=p, max_tokens=24, serve=True) for p in PROMPTS]
    )
    for i, done in zip(ids, replies):
        assert isinstance(done, P.Done) and done.tokens
        kinds = [type(m).__name__ for m in burst.events[i]]
        assert kinds[0] == "Started" and kinds[-1] == "Done" and set(kinds[1:-1]) == {"Delta"}
        deltas = [m for m in burst.events[i] if isinstance(m, P.Delta)]
        assert "".join(d.text for d in deltas) == done.text
        assert [t for d in deltas for t in d.tokens] == done.tokens


def test_events_held_for_one_write_keep_their_order_and_other_threads_are_not_held():
    read_fd, write_fd = os.pipe()
    writer = EventWriter(os.fdopen(write_fd, "wb", buffering=0))
    with writer.held():
        for k in range(3):
            writer(P.Delta(id=1, text=f"t{k}", tokens=[k], n_past=k))
        log = threading.Thread(target=writer, args=(P.LogEvent(level=3, text="from a thread"),))
        log.start()
        log.join()
        assert P.decode(os.read(read_fd, 1 << 16)) == P.LogEvent(level=3, text="from a thread")
    lines = os.read(read_fd, 1 << 16).splitlines()  # all three in one write
    assert [P.decode(line).text for line in lines] == ["t0", "t1", "t2"]  # type: ignore[attr-defined]
    os.close(read_fd)


def test_quick_requests_are_answered_between_steps_without_ending_the_batch(host):
    """Tokenize and the RPC workers' memory (the Machines dock asks every few seconds) are
    answered between decode steps; before, such a request stopped the batch from admitting new
    requests until every running one had ended."""
    started, done = threading.Event(), threading.Event()

    def on_event(msg: P.Message) -> None:
        if isinstance(msg, P.Started):
            started.set()
        elif isinstance(msg, (P.Done, P.ErrorEvent)):
            done.set()

    long_reply = P.GenerateRequest(  # a grammar that cannot end before 300 characters
        id=0,
        prompt=PROMPTS[2],
        max_tokens=200,
        serve=True,
        json_schema='{"type": "string", "minLength": 300}',
    )
    host.submit("generate", lambda i: P.GenerateRequest(**{**vars(long_reply), "id": i}), on_event)
    assert started.wait(300)
    assert host.remote_memory(timeout=300) == []  # no workers here
    assert host.tokenize("hello", timeout=300)
    assert not done.is_set()  # both answered while the reply was still being generated
    assert done.wait(300)


def _turn(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def test_next_turns_arriving_together_each_find_their_own_conversation(empty_host):
    """Two conversations served one after the other keep a sequence each (the chat template's
    shared first line is too little of a prompt to count); their next turns, sent together in
    the other order, each reuse their own conversation's cells. From empty sequences the two
    land side by side: with a free sequence between them, the busy ones staying one run of ids
    comes first (engine.child.prefix.choose), and one turn would be prefilled again."""
    host = empty_host
    river = _turn("Tell me about rivers, lakes, seas and oceans, and the animals that live there. " * 3)
    city = _turn("Describe a busy city market at dawn: the stalls, the smells, the people. " * 3)
    first = {
        p: host.call("generate", lambda i, p=p: _generate(i, p, GREEDY), timeout=300) for p in (river, city)
    }
    assert all(isinstance(d, P.Done) for d in first.values())
    more = "<|im_end|>\n" + _turn("Say more.")
    nexts = [city + first[city].text + more, river + first[river].text + more]
    burst = Burst(2)  # not behind a benchmark, which would clear the cache
    ids = [host.submit("generate", lambda i, p=p: _generate(i, p, GREEDY), burst.on_event) for p in nexts]
    assert burst.all_done.wait(300)
    city2, river2 = (burst.done[i] for i in ids)
    assert isinstance(city2, P.Done) and city2.n_reused >= first[city].n_prompt
    assert isinstance(river2, P.Done) and river2.n_reused >= first[river].n_prompt
