"""Backend sampling in the batch loop (engine.child.batch_backend), SmolLM2 on the CPU backend.

With ``KVDECK_BACKEND_SAMPLING=1`` a request whose sampling llama.cpp can run inside the decode
graph gets a device chain on its sequence (penalties included); the others (a grammar,
log-probabilities) keep the CPU chains, in the same batch. Greedy replies must equal the CPU path's token for
token, a seeded reply must not depend on what else runs beside it, and a sequence must switch
between device and CPU chains from one request to the next.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, held_burst
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
SLOTS = 3
PROMPTS = CHAT_PROMPTS
GREEDY = {"temperature": 0}
SEEDED = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 7}
PENALISED = {"temperature": 0, "repeat_penalty": 1.3}
SCHEMA = '{"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}'


class DeviceSeen:
    """Every Slots event's per-sequence ``device`` flags, by request id."""

    def __init__(self) -> None:
        self.by_request: dict[int, set[bool]] = {}
        self.lock = threading.Lock()

    def on_event(self, msg: object) -> None:
        if isinstance(msg, P.Slots):
            with self.lock:
                for r, d in zip(msg.requests, msg.device):
                    if r:
                        self.by_request.setdefault(r, set()).add(d)


def _load(path, seen: DeviceSeen | None, backend: bool):
    env = {**os.environ, "KVDECK_BACKEND_SAMPLING": "1" if backend else "0"}
    params = P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=512 * SLOTS, n_seq_max=SLOTS))
    return running_host(params, env=env, on_event=seen.on_event if seen else None)


@pytest.fixture(scope="module")
def device(smollm2_path):
    seen = DeviceSeen()
    with _load(smollm2_path, seen, backend=True) as (host, _):
        yield host, seen


@pytest.fixture(scope="module")
def cpu(smollm2_path):
    with _load(smollm2_path, None, backend=False) as (host, _):
        yield host


def _req(prompt: str, sampling: dict, **kw) -> object:
    return lambda i: P.GenerateRequest(
        id=i, prompt=prompt, max_tokens=24, sampling=sampling, serve=True, **kw
    )


def _burst(host, builds) -> tuple[list[int], list[P.Done]]:
    ids, replies, _ = held_burst(host, builds)
    assert all(isinstance(d, P.Done) for d in replies), replies
    return ids, replies  # type: ignore[return-value]


def test_greedy_replies_on_the_device_equal_the_cpu_path(device, cpu):
    host, seen = device
    builds = [_req(p, GREEDY) for p in PROMPTS]
    ids, on_device = _burst(host, builds)
    _, on_cpu = _burst(cpu, builds)
    assert [d.tokens for d in on_device] == [d.tokens for d in on_cpu]
    assert all(d.tokens for d in on_device)
    assert all(seen.by_request[i] == {True} for i in ids), (ids, seen.by_request)


def test_a_seeded_reply_depends_on_its_seed_not_on_its_neighbours(device):
    host, seen = device
    ids, together = _burst(host, [_req(p, SEEDED) for p in PROMPTS])
    assert all(seen.by_request[i] == {True} for i in ids)
    _, alone = _burst(host, [_req(PROMPTS[1], SEEDED)])
    _, again = _burst(host, [_req(p, SEEDED) for p in PROMPTS])
    assert together[1].tokens == alone[0].tokens
    assert [d.tokens for d in together] == [d.tokens for d in again]
    _, other_seed = _burst(host, [_req(PROMPTS[2], {**SEEDED, "seed": 8, "temperature": 1.5})])
    assert other_seed[0].tokens != together[2].tokens


def test_grammar_and_logprobs_keep_the_cpu_chain_beside_device_chains(device, cpu):
    host, seen = device
    builds = [
        _req(PROMPTS[0], GREEDY, json_schema=SCHEMA),
        _req(PROMPTS[1], GREEDY, logprobs=2),
        _req(PROMPTS[2], PENALISED),
    ]
    ids, on_device = _burst(host, builds)
    _, on_cpu = _burst(cpu, builds)
    assert [d.tokens for d in on_device] == [d.tokens for d in on_cpu]
    assert isinstance(json.loads(on_device[0].text), dict)
    assert len(on_device[1].logprobs) == len(on_device[1].tokens)
    assert [seen.by_request[i] for i in ids] == [{False}, {False}, {True}]


def test_a_sequence_switches_between_device_and_cpu_chains(device, cpu):
    """One slot: greedy on the device, then log-probabilities (CPU), then seeded, then greedy."""
    host, seen = device
    order = [
        _req(PROMPTS[0], GREEDY),
        _req(PROMPTS[0], GREEDY, logprobs=2),
        _req(PROMPTS[2], SEEDED),
        _req(PROMPTS[0], GREEDY),
    ]
    got = [_burst(host, [b]) for b in order]
    assert [seen.by_request[ids[0]] for ids, _ in got] == [{True}, {False}, {True}, {True}]
    greedy_cpu = _burst(cpu, [order[0]])[1][0].tokens
    assert got[0][1][0].tokens == got[1][1][0].tokens == got[3][1][0].tokens == greedy_cpu
    assert got[1][1][0].logprobs
