"""The server drafts per sequence (issue 19): with several sequences live in the batch loop, each
drafts from its own MTP state, the target verifies every sequence's drafts in the step's one
batch, and each sequence keeps or cuts back its own cells. Random-weight models: greedy identity
with the non-drafting batch loop is the specification; acceptance itself means nothing here.
"""

from __future__ import annotations

import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from tests.helpers import mtp_models as mm
from tests.helpers.burst import held_burst
from tests.helpers.runtime_host import running_host

GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
PROMPTS = [" ".join(f"w{(p * 7 + i) % 61}" for i in range(3 + p)) for p in range(4)]
SLOTS = 3


def _request(prompt: str, draft: str, sampling: dict = GREEDY):
    return lambda i: P.GenerateRequest(
        id=i, prompt=prompt, max_tokens=96, sampling=sampling, serve=True, draft=draft, draft_max=4
    )


def _replies(host, draft: str, sampling: dict = GREEDY) -> list[P.Done]:
    _ids, replies, _b = held_burst(host, [_request(p, draft, sampling) for p in PROMPTS], n_prompt=64)
    assert all(isinstance(d, P.Done) for d in replies), replies
    return replies  # type: ignore[return-value]


@pytest.mark.parametrize(
    "heads,extra", [(3, {}), (1, {})], ids=["chained heads (hy_v3)", "single head (hy_v3)"]
)
def test_concurrent_requests_draft_per_sequence_and_keep_the_plain_output(tmp_path, heads, extra):
    path = mm.write_hyv3(tmp_path / "t.gguf", n_nextn=heads)
    settings = PlanSettings(n_ctx=256 * SLOTS, n_seq_max=SLOTS, n_batch=64, n_ubatch=64, mtp=True, **extra)
    with running_host(P.LoadParams(str(path), settings=settings)) as (host, loaded):
        assert loaded.mtp == "ready"
        plain = _replies(host, "")
        fast = _replies(host, "mtp")
        sampled = _replies(host, "mtp", {"temperature": 0.8, "seed": 3})  # in the batch, no drafts
    assert [d.tokens for d in fast] == [d.tokens for d in plain]
    for d in fast:
        assert d.draft == "mtp" and len(d.drafted_at) == (heads if heads > 1 else 4)  # k <= chained heads
        assert d.n_drafted == sum(d.drafted_at) > 0 and d.n_accepted == sum(d.accepted_at)
    assert all(d.tokens and d.n_drafted == 0 for d in sampled)
    drafted, accepted = (
        [sum(x) for x in zip(*col)] for col in ([d.drafted_at for d in fast], [d.accepted_at for d in fast])
    )
    print("\nacceptance by position", drafted, accepted)
