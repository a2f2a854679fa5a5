"""Sampling a row whose chain starts with top-k from only the tokens that can be among the k best.

Why: ``llama_sampler_sample`` copies the whole logits row into a fresh candidate array (12
bytes a token: 1.5 MB at a 128k vocabulary, src/llama-sampler.cpp) before top-k throws all
but k of them away. On the H200's host that was 0.28 ms a row, and sixteen rows sampled on
sixteen threads at once still took 1.8 ms a step (2026-12-05): the per-row allocations and
their page faults do not run in parallel. Which tokens can be among the k best is known from a
pass that writes nothing: the k-th largest logit of every :data:`STRIDE`-th token is a
threshold that at least k tokens reach, so each of the k best reaches it too. Only those
tokens (a few hundred) go into the candidate array, in vocabulary order as llama.cpp writes
it, and the chain runs on them: its top-k keeps the same k tokens, and every sampler after
top-k only ever sees those k, so the token and the chain's state (the dist sampler's
generator, the penalties' history) are llama.cpp's. Short of exact ties among the k best:
llama.cpp's partial sort is not stable, so equal logits may come out in another order from a
shorter array, and the dist sampler, which picks by position, may then name the other one.
"""

from __future__ import annotations

import ctypes
import threading

import llama_cpp.llama_cpp as LL
import numpy as np

#: Every STRIDE-th logit decides the threshold: 1/8 of the row to partition, and a few hundred
#: candidates at k = 40 (8 k on average).
STRIDE = 8
#: Below this vocabulary the whole row is cheap to copy: llama.cpp's own path.
MIN_VOCAB = 4096

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert TOKEN_DATA.itemsize == ctypes.sizeof(LL.llama_token_data)


def leading_top_k(spec: tuple[tuple[object, ...], ...] | None) -> int:
    """k when a chain spec (engine.child.sampler.chain_spec) starts with top-k, else 0."""
    if spec and spec[0][0] == "top_k" and isinstance(spec[0][1], int) and spec[0][1] > 0:
        return spec[0][1]
    return 0


class TopKCut:
    """Samples rows with a chain that starts with top-k; one candidate buffer per thread."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.local = threading.local()

    def usable(self, k: int) -> bool:
        return self.n_vocab >= MIN_VOCAB and 0 < k * STRIDE <= self.n_vocab // 2

    def sample(self, chain: object, row: np.ndarray, k: int) -> int | None:
        """The chain's token for ``row`` (and the chain has accepted it); None when the row
        has no k comparable logits (NaN), for llama.cpp's own path to decide."""
        sub = row[::STRIDE]
        cut = len(sub) - k
        t = np.partition(sub, cut)[cut]
        idx = np.flatnonzero(row >= t)
        n = len(idx)
        if n < k:  # t is NaN
            return None
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        buf["id"][:n] = idx
        buf["logit"][:n] = row[idx]
        buf["p"][:n] = 0.0
        arr = LL.llama_token_data_array(buf.ctypes.data_as(ctypes.POINTER(LL.llama_token_data)), n, -1, False)
        LL.llama_sampler_apply(chain, ctypes.byref(arr))
        tok = int(arr.data[arr.selected].id)  # top-k may hand back another array
        LL.llama_sampler_accept(chain, tok)
        return tok
