"""Sampling every output row of one batch step (engine.child.batch), in parallel.

Why: after a decode step each generating sequence samples its own row of logits with its own
CPU sampler chain. For a chain that cuts the vocabulary (top-k, top-p) llama.cpp first copies
the whole row into a candidate array and sorts part of it: about half a millisecond for a 128k
vocabulary, so sixteen sequences sampled one after another cost more than the decode step
itself on a fast GPU (the gap to llama-batched-bench measured on an H200). The rows are
independent (each request owns its chain, its grammar and its seed), and ctypes releases the
GIL for the length of a native call, so the rows are sampled on a small pool of threads at
once. The results are the same token for token as sampling the rows in order: nothing is
shared between chains, and the context is only read: its lazy writes (the synchronise's
bookkeeping and the output reorder, src/llama-context.cpp) happen on the calling thread before
the workers start, after which every getter's synchronise and reorder find nothing to do.

Greedy rows without a chain are a numpy argmax on the row (numpy releases the GIL for it too).
A chain that starts with top-k runs on the few tokens that can be among the k best
(engine.child.topk_cut) instead of a copy of the whole row.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.topk_cut import TopKCut

# Our own handle so the logits pointer comes back as a plain int (llama_cpp's function objects
# are shared with the rest of the child and keep their restypes).
LIB = ctypes.CDLL(LL._lib._name)
LIB.llama_get_logits_ith.restype = ctypes.c_void_p
LIB.llama_get_logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]
LIB.llama_get_logits.restype = ctypes.c_void_p
LIB.llama_get_logits.argtypes = [ctypes.c_void_p]


@dataclass
class LoopTimes:
    """Where the batch loop's time went, summed since the child started (P.Slots carries it):
    the part outside llama_decode is what separates us from llama-batched-bench."""

    steps: int = 0
    decode_s: float = 0.0  # llama_decode until the device finished the step
    sample_s: float = 0.0  # sampling every row of the step
    busy_s: float = 0.0  # the loop running at all (requests, streaming, scheduling included)
    gen_steps: int = 0  # steps with one generated token per row, no prompt rows, no drafts
    gen_decode_s: float = 0.0  # their llama_decode seconds


#: One model per child process, one batch loop at a time: the totals are the child's.
TIMES = LoopTimes()


class Sampled(Protocol):
    """What the sampler needs of a slot (engine.child.slots.Slot)."""

    chain: object | None
    first: object | None
    out: list[int]
    cut: int


def workers() -> int:
    """Threads for sampling: the CPUs this process may use, at most 16 (more rows than that
    wait); ``KVDECK_SAMPLE_THREADS`` overrides it (1 samples the rows in order, for measuring)."""
    if os.environ.get("KVDECK_SAMPLE_THREADS", "").isdigit():
        return max(1, int(os.environ["KVDECK_SAMPLE_THREADS"]))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(16, n))


class RowSampler:
    """Samples the rows of one step; owns its worker threads (``close`` ends them)."""

    def __init__(self, ctx: object, n_vocab: int, n_workers: int | None = None) -> None:
        self.ctx = ctx
        self.row_t = ctypes.c_float * n_vocab
        self.n_workers = n_workers or workers()
        self.topk = TopKCut(n_vocab)
        # The calling thread samples the numpy rows meanwhile (``all``).
        self.pool = ThreadPoolExecutor(self.n_workers - 1, "kvdeck-sample") if self.n_workers > 1 else None

    def one(self, s: Sampled, i: int) -> int:
        """The token for batch row ``i`` of slot ``s`` (its first-token chain for its first token)."""
        ctx = self.ctx
        if not s.out and s.first is not None:
            tok = LL.llama_sampler_sample(s.first, ctx, i)
            if s.chain is not None:
                LL.llama_sampler_accept(s.chain, tok)
            return int(tok)
        if s.chain is not None:
            if s.cut and self.topk.usable(s.cut):
                row = np.ctypeslib.as_array(self.row_t.from_address(LIB.llama_get_logits_ith(ctx, i)))
                tok = self.topk.sample(s.chain, row, s.cut)
                if tok is not None:
                    return tok
            return int(LL.llama_sampler_sample(s.chain, ctx, i))
        row = np.ctypeslib.as_array(self.row_t.from_address(LIB.llama_get_logits_ith(ctx, i)))
        return int(row.argmax())

    def _group(self, rows: Sequence[tuple[int, Sampled]]) -> list[int]:
        return [self.one(s, i) for i, s in rows]

    def native(self, s: Sampled) -> bool:
        """Whether the row is sampled inside one llama.cpp call (which releases the GIL, so
        such rows gain from threads); the top-k cut and the argmax are short numpy steps that
        hold it, and ran no faster on two threads than on one (0.61 vs 0.62 ms for sixteen
        128k rows), so those stay on the calling thread."""
        if not s.out and s.first is not None:
            return True
        return s.chain is not None and not (s.cut and self.topk.usable(s.cut))

    def all(self, rows: Sequence[tuple[int, Sampled]]) -> list[int]:
        """One token per (batch row, slot), in order."""
        native = [j for j, (_, s) in enumerate(rows) if self.native(s)]
        if self.pool is None or len(native) < 2:
            return self._group(rows)
        LIB.llama_get_logits(self.ctx)  # synchronise and reorder (writes) here, once
        pooled = set(native)
        local = [j for j in range(len(rows)) if j not in pooled]
        # with no numpy rows, the calling thread samples a share itself: it would only wait
        k = min(self.n_workers - (1 if local else 0), len(native))
        groups = [native[g::k] for g in range(k)]
        mine = [] if local else groups.pop(0)
        jobs = [(js, self.pool.submit(self._group, [rows[j] for j in js])) for js in groups]
        out = [0] * len(rows)
        for j in local + mine:
            i, s = rows[j]
            out[j] = self.one(s, i)
        for js, job in jobs:
            for j, tok in zip(js, job.result()):
                out[j] = tok
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
