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
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import llama_cpp.llama_cpp as LL

from engine.child.grammar import logits_row
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


class Split:
    """How many top-k cuts the calling thread takes while the pool samples the step's other
    rows natively: the share that ends both at once, from moving averages of what a cut took
    here and what the pool took for its first row and for each row after it (on the H200's
    host: a cut 0.15 ms, llama.cpp's call 0.28 ms alone, sixteen on the pool 1.5 ms)."""

    def __init__(self) -> None:
        self.cut_s, self.first_s, self.more_s = 1.5e-4, 3.0e-4, 1.0e-4

    def _pool(self, m: int) -> float:
        return 0.0 if m == 0 else self.first_s + (m - 1) * self.more_s

    def local(self, n_flexible: int, n_required: int) -> int:
        """Cuts for the calling thread out of ``n_flexible``; the rest and ``n_required`` pool."""
        return min(
            range(n_flexible + 1),
            key=lambda r: max(r * self.cut_s, self._pool(n_flexible - r + n_required)),
        )

    def saw_cut(self, n: int, seconds: float) -> None:
        self.cut_s += 0.1 * (seconds / n - self.cut_s)

    def saw_pool(self, n: int, seconds: float) -> None:
        if n == 1:
            self.first_s += 0.1 * (seconds - self.first_s)
        else:
            self.more_s += 0.1 * (max(1e-6, (seconds - self.first_s) / (n - 1)) - self.more_s)


class RowSampler:
    """Samples the rows of one step; owns its worker threads (``close`` ends them)."""

    def __init__(self, ctx: object, n_vocab: int, n_workers: int | None = None) -> None:
        self.ctx = ctx
        self.n_vocab = n_vocab
        self.n_workers = n_workers or workers()
        self.topk = TopKCut(n_vocab)
        self.split = Split()
        # The calling thread samples the numpy rows meanwhile (``all``).
        self.pool = ThreadPoolExecutor(self.n_workers - 1, "kvdeck-sample") if self.n_workers > 1 else None

    def one(self, s: Sampled, i: int, native: bool = False) -> int:
        """The token for batch row ``i`` of slot ``s`` (its first-token chain for its first
        token); ``native``: with llama.cpp's own sampling even where the top-k cut applies."""
        ctx = self.ctx
        if not s.out and s.first is not None:
            tok = LL.llama_sampler_sample(s.first, ctx, i)
            if s.chain is not None:
                LL.llama_sampler_accept(s.chain, tok)
            return int(tok)
        if s.chain is not None:
            if not native and self.cuttable(s):
                tok = self.topk.sample(s.chain, logits_row(LIB, ctx, i, self.n_vocab), s.cut)
                if tok is not None:
                    return tok
            return int(LL.llama_sampler_sample(s.chain, ctx, i))
        return int(logits_row(LIB, ctx, i, self.n_vocab).argmax())

    def cuttable(self, s: Sampled) -> bool:
        first_done = bool(s.out) or s.first is None
        return s.chain is not None and bool(s.cut) and self.topk.usable(s.cut) and first_done

    def _pooled(self, rows: Sequence[tuple[int, Sampled]], native: bool) -> tuple[list[int], float]:
        return [self.one(s, i, native) for i, s in rows], time.perf_counter()

    def all(self, rows: Sequence[tuple[int, Sampled]]) -> list[int]:
        """One token per (batch row, slot), in order.

        Two ways to sample a row: llama.cpp's call (which releases the GIL, so rows gain from
        threads, but copies the whole row) and, where the chain starts with top-k, the cut
        (engine.child.topk_cut: a quarter of the work, but short numpy steps that hold the GIL:
        no faster on two threads than on one, 0.61 vs 0.62 ms for sixteen 128k rows). So the
        calling thread cuts as many rows as it can while the pool samples the others natively,
        the share set from what both took on earlier steps (:class:`Split`)."""
        if self.pool is None or len(rows) < 2:
            return [self.one(s, i) for i, s in rows]
        flexible = [j for j, (_, s) in enumerate(rows) if self.cuttable(s)]
        cuts = set(flexible)
        required = [j for j, (_, s) in enumerate(rows) if s.chain is not None and j not in cuts]
        r = self.split.local(len(flexible), len(required))
        there = required + flexible[r:]
        if not there:
            return [self.one(s, i) for i, s in rows]
        LIB.llama_get_logits(self.ctx)  # synchronise and reorder (writes) here, once
        k = min(self.n_workers - 1, len(there))
        groups = [there[g::k] for g in range(k)]
        t0 = time.perf_counter()
        jobs = [(js, self.pool.submit(self._pooled, [rows[j] for j in js], True)) for js in groups]
        out = [0] * len(rows)
        for j, (i, s) in enumerate(rows):  # the argmax rows, then the cuts
            if s.chain is None:
                out[j] = self.one(s, i)
        t_cut = time.perf_counter()
        for j in flexible[:r]:
            i, s = rows[j]
            out[j] = self.one(s, i)
        if r:
            self.split.saw_cut(r, time.perf_counter() - t_cut)
        ends = []
        for js, job in jobs:
            toks, end = job.result()
            ends.append(end)
            for j, tok in zip(js, toks):
                out[j] = tok
        self.split.saw_pool(len(there), max(ends) - t0)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
