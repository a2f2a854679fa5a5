"""Sampling from the tokens that can be among the k best (engine.child.topk_cut) picks what
llama.cpp's chain picks from the whole row, and leaves the chain in the same state."""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as LL
import numpy as np
import pytest

from engine.child.topk_cut import TOKEN_DATA, TopKCut, leading_top_k

N_VOCAB = 131072


def chain(k: int, seed: int) -> object:
    c = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
    for smpl in (
        LL.llama_sampler_init_top_k(k),
        LL.llama_sampler_init_top_p(0.95, 1),
        LL.llama_sampler_init_min_p(0.05, 1),
        LL.llama_sampler_init_temp(0.8),
        LL.llama_sampler_init_dist(seed),
    ):
        LL.llama_sampler_chain_add(c, smpl)
    return c


def whole_row(c: object, row: np.ndarray) -> int:
    """llama_sampler_sample's way: every token a candidate, then apply and accept."""
    buf = np.zeros(len(row), dtype=TOKEN_DATA)
    buf["id"], buf["logit"] = np.arange(len(row)), row
    arr = LL.llama_token_data_array(
        buf.ctypes.data_as(ctypes.POINTER(LL.llama_token_data)), len(row), -1, False
    )
    LL.llama_sampler_apply(c, ctypes.byref(arr))
    tok = int(arr.data[arr.selected].id)
    LL.llama_sampler_accept(c, tok)
    return tok


@pytest.mark.parametrize("k", [1, 40, 200])
def test_the_cut_samples_the_same_tokens_as_the_whole_row(k: int) -> None:
    rng = np.random.default_rng(k)
    rows = [(rng.standard_normal(N_VOCAB) * s).astype(np.float32) for s in (0.5, 2.5, 8.0) for _ in range(20)]
    ours, theirs = chain(k, 11), chain(k, 11)
    cut = TopKCut(N_VOCAB)
    try:
        assert cut.usable(k)
        assert [cut.sample(ours, r, k) for r in rows] == [whole_row(theirs, r) for r in rows]
    finally:
        LL.llama_sampler_free(ours)
        LL.llama_sampler_free(theirs)


def test_a_peaked_row_and_a_flat_tail_are_cut_exactly() -> None:
    """A model's row: a few high logits, the rest nearly tied far below."""
    row = np.full(N_VOCAB, -20.0, dtype=np.float32)
    row[[5, 70000, 131071]] = [3.0, 2.5, 2.9]
    ours, theirs = chain(40, 3), chain(40, 3)
    try:
        assert [TopKCut(N_VOCAB).sample(ours, row, 40) for _ in range(30)] == [
            whole_row(theirs, row) for _ in range(30)
        ]
    finally:
        LL.llama_sampler_free(ours)
        LL.llama_sampler_free(theirs)


def test_a_row_with_nan_is_left_to_llama_cpp() -> None:
    row = np.full(N_VOCAB, np.nan, dtype=np.float32)
    c = chain(40, 1)
    try:
        assert TopKCut(N_VOCAB).sample(c, row, 40) is None
    finally:
        LL.llama_sampler_free(c)


def test_only_a_chain_that_starts_with_top_k_is_cut() -> None:
    assert leading_top_k((("top_k", 40), ("top_p", 0.95), ("temp", 0.8), ("dist", 1))) == 40
    assert leading_top_k((("logit_bias", (2,)), ("top_k", 40), ("dist", 1))) == 0
    assert leading_top_k((("greedy",),)) == 0
    assert leading_top_k(None) == 0
    assert not TopKCut(1000).usable(40)  # a small vocabulary: llama.cpp's own path


def test_the_calling_thread_cuts_as_many_rows_as_end_with_the_pool() -> None:
    from engine.child.batch_sample import Split

    split = Split()  # a cut 0.15 ms here; the pool 0.3 ms for its first row, 0.1 for each more
    assert split.local(1, 0) == 1  # one row: a cut beats waking the pool for a whole copy
    assert 0 < split.local(16, 0) < 16  # sixteen: both work, ending about together
    assert split.local(16, 16) > split.local(16, 0)  # the pool is busy with rows only it can sample
    for _ in range(200):  # a machine where the pool is slow learns to cut more here
        split.saw_pool(16, 16 * 0.5e-3)
    assert split.local(16, 0) > Split().local(16, 0)
