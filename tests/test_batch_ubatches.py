"""Which batch-loop steps llama_decode returns from at once (engine.child.batch_rows.returns_at_once).

Only then may the step before's text and ended replies go out while the GPU runs the step;
otherwise the call holds them until the step's first ubatch is done (on an H200, a reply's last
token reached its client 20 ms late behind a step that prefilled the next request) or its graph
is built (7-13 ms on an H100). The rules are llama.cpp's own (0c1e570): one KV stream splits a
batch n_ubatch tokens at a time (``split_simple``); a stream per sequence takes as many tokens
of every sequence into a ubatch, consecutive sequence ids only (``split_equal`` with
``sequential``, src/llama-batch.cpp:542-633); a graph is reused only for the same tokens of the
same sequences (``llm_graph_params::allow_reuse``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.child.batch_rows import StepRows, returns_at_once

N_UBATCH = 512


def _step(*fed: tuple[int, int], drafts: tuple[tuple[int, int], ...] = ()) -> StepRows:
    """A step feeding (sequence, prompt tokens; 0: one generated token) and (sequence, drafts)."""
    rows = StepRows(
        fed=[(SimpleNamespace(seq=seq), k) for seq, k in fed],
        checks=[(0, SimpleNamespace(seq=seq), [0] * d) for seq, d in drafts],
    )
    rows.n = sum(max(k, 1) for _, k in fed) + sum(1 + d for _, d in drafts)
    return rows


@pytest.mark.parametrize(
    ("step", "streams", "one"),
    [
        (_step(*((s, 0) for s in range(16))), True, True),  # sixteen generated tokens
        (_step(*((s, 0) for s in range(3, 9))), True, True),  # a run that does not start at 0
        (_step((0, 0), (1, 0), (3, 0)), True, False),  # a gap: a ubatch per run
        (_step((0, 0), (1, 0), (2, 123)), True, False),  # a prompt beside generated rows
        (_step((0, 0), (1, 0), (2, 123)), False, True),  # ... in one stream: one ubatch
        (_step((0, 100), (1, 100)), True, True),  # prompts of one length together
        (_step((0, 100), (1, 101)), True, False),
        (_step((0, 0), drafts=((1, 3),)), True, False),  # a draft's rows beside a generated one
        (_step((0, 300), (1, 300)), False, False),  # more than n_ubatch tokens
    ],
)
def test_a_step_of_the_last_shape_returns_at_once_where_llama_cpp_makes_it_one_ubatch(
    step: StepRows, streams: bool, one: bool
) -> None:
    assert returns_at_once(step.n, step.per_seq(), step.per_seq(), streams, N_UBATCH) is one


def test_a_step_whose_graph_is_built_anew_does_not_return_at_once() -> None:
    sixteen = _step(*((s, 0) for s in range(16)))
    assert not returns_at_once(sixteen.n, sixteen.per_seq(), None, True, N_UBATCH)  # the first step of a run
    after_prefill = _step((0, 100), (1, 100)).per_seq()
    two = _step((0, 0), (1, 0))
    assert not returns_at_once(two.n, two.per_seq(), after_prefill, True, N_UBATCH)
    one_ended = _step(*((s, 0) for s in range(15))).per_seq()
    assert not returns_at_once(sixteen.n, sixteen.per_seq(), one_ended, False, N_UBATCH)
