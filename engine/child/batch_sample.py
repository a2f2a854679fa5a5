"""Sampling every output row of one batch step (engine.child.batch), in parallel.

Why: after a decode step each generating sequence samples its own row of logits with its own
CPU sampler chain. For a chain that cuts the vocabulary (top-k, top-p) llama.cpp first writes
the whole row into a candidate array and sorts part of it: about 0.3 ms for a 128k vocabulary,
so sixteen sequences sampled one after another cost more than half the decode step itself on a
fast GPU (the gap to llama-batched-bench measured on an H200). The rows are independent (each
request owns its chain, its grammar and its seed), so they are sampled at once: greedy rows and
chains that start with top-k (llama-server's default chain, and ours) in one native call that
spreads them over threads (engine.child.topk_cut), the others with llama.cpp's own call on a
small pool meanwhile (ctypes releases the GIL for its length). The results are the same token
for token as sampling the rows in order (the native call up to the order of exact ties,
engine.child.topk_cut): nothing is shared between chains, and the context is only read: its lazy
writes (the output reorder, src/llama-context.cpp) happen on the calling thread before the
workers start; after that a getter's synchronise only stores the same zeros again.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol

import llama_cpp.llama_cpp as LL
import numpy as np

from engine import protocol as P
from engine.child.grammar import logits_row
from engine.child.slots import Slot
from engine.child.topk_cut import NATIVE, NativeRows

# Our own handle so the logits pointer comes back as a plain int (llama_cpp's function objects
# are shared with the rest of the child and keep their restypes).
LIB = ctypes.CDLL(LL._lib._name)
LIB.llama_get_logits_ith.restype = ctypes.c_void_p
LIB.llama_get_logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]
LIB.llama_get_logits.restype = ctypes.c_void_p
LIB.llama_get_logits.argtypes = [ctypes.c_void_p]
for _name in ("llama_get_sampled_logits_ith", "llama_get_sampled_candidates_ith"):  # addresses
    getattr(LIB, _name).restype = ctypes.c_void_p
    getattr(LIB, _name).argtypes = [ctypes.c_void_p, ctypes.c_int32]


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
    gen_sample_s: float = 0.0  # their sampling seconds
    reorder_s: float = 0.0  # each step's first logits access (llama.cpp's output reorder)
    cut_rows: int = 0  # rows sampled from the device's candidates (engine.child.device_cut)
    followed: int = 0  # steps launched as soon as the step before was sampled (engine.child.batch)
    relaunch_s: float = 0.0  # their seconds from the step before's logits to their launch
    native_s: float = 0.0  # of sample_s, the seconds inside the native call (engine.child.topk_cut)
    cut_attached: int = 0  # device cuts attached to a sequence, each a graph rebuild (device_cut)


#: One model per child process, one batch loop at a time: the totals are the child's.
TIMES = LoopTimes()


def slots_event(slots: Sequence[Slot | None], n_ctx_seq: int, n_waiting: int) -> P.Slots:
    """Per-sequence occupancy for the KV view, with the loop's times so far (every field of
    :class:`LoopTimes` is one of P.Slots's)."""
    return P.Slots(
        n_past=[s.n_past if s else 0 for s in slots],
        requests=[s.w.req.id if s else 0 for s in slots],
        n_ctx_seq=n_ctx_seq,
        n_waiting=n_waiting,
        device=[bool(s and s.device) for s in slots],
        **asdict(TIMES),
    )


class Switch:
    """A batch-loop behaviour that is on where the caller says it pays (mostly: where
    llama_decode returns before the device is done, a GPU), unless environment variable ``name``
    is ``1`` (always: tests take the GPU's path on a CPU) or ``0`` (never: for measuring). Read
    once."""

    def __init__(self, name: str) -> None:
        self.mode = os.environ.get(name, "auto")

    def __call__(self, pays: bool) -> bool:
        return self.mode == "1" or (self.mode != "0" and pays)


class Sampled(Protocol):
    """What the sampler needs of a slot (engine.child.slots.Slot)."""

    chain: object | None
    first: object | None
    out: list[int]
    cut: int
    cut_device: bool
    chain_at: int


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


#: A step's rows that the device cut to this many candidates in all, or fewer (sixteen rows of
#: top-k 40 and two end-of-generation tokens: 672; engine.child.device_cut), are sampled on the
#: calling thread alone: a few microseconds a row, less than waking the sampling threads.
FEW = 4096

#: Prewoken sampling threads start spinning this long before the step's logits are due, and
#: spin at most SPIN_S (engine.child.topk_cut.NativeRows.prewake).
LEAD_S, SPIN_S = 0.0005, 0.002


class RowSampler:
    """Samples the rows of one step; owns its worker threads (``close`` ends them)."""

    def __init__(self, ctx: object, n_vocab: int, n_workers: int | None = None) -> None:
        self.ctx = ctx
        self.n_vocab = n_vocab
        self.row_bytes = 4 * n_vocab  # one row of float logits
        self.n_workers = n_workers or workers()
        self.native = NativeRows(n_vocab, self.n_workers)
        self.prewaking = os.environ.get("KVDECK_SAMPLE_PREWAKE", "") != "0"
        self.decode_s: dict[int, float] = {}  # tokens in a step -> a moving average of its decode
        self.few = False  # the last step's rows were all cut, to FEW candidates or fewer in all
        # Rows only llama.cpp's own call can sample run here while the native call runs.
        self.pool = ThreadPoolExecutor(self.n_workers - 1, "kvdeck-sample") if self.n_workers > 1 else None

    def decoding(self, n_tokens: int, n_rows: int, since: float, on_device: bool) -> None:
        """A step of ``n_tokens`` tokens and ``n_rows`` output rows went to the device at
        ``since`` (perf_counter), ``on_device``: llama_decode returned before the device was
        done. Then wake the sampling threads so that they run when its logits are due (off with
        ``KVDECK_SAMPLE_PREWAKE=0``). Why: threads asleep through a decode take longer to wake
        than the rows take. On an H200 (benchmarks/results/server-2026-12-05-h200.json) sixteen
        rows took 0.21 ms a step prewoken against 0.27-0.30 ms, 64 clients' steady decode rose
        3.5 %, and the decode did not slow. Never on a CPU, whose decode these threads would
        slow: its llama_decode returns when the step is done."""
        expected = self.decode_s.get(n_tokens)
        if self.prewaking and on_device and expected is not None and n_rows > 1 and not self.few:
            left = expected - (time.perf_counter() - since)
            self.native.prewake(n_rows, left - LEAD_S, SPIN_S)

    def decoded(self, n_tokens: int, seconds: float) -> None:
        old = self.decode_s.get(n_tokens, seconds)
        self.decode_s[n_tokens] = old + 0.2 * (seconds - old)

    def one(self, s: Sampled, i: int) -> int:
        """The token for batch row ``i`` of slot ``s`` (its first-token chain for its first
        token). A lone greedy row is numpy's argmax: faster than a native call for one row."""
        if s.chain is not None and self.cuttable(s):
            cut = [self._cut(i)] if s.cut_device else None  # the row is what the device kept
            tok = self.native.sample([LIB.llama_get_logits_ith(self.ctx, i)], [s.chain_at], [s.cut], cut)[0]
            if tok >= 0:
                return tok
        return self._llama(s, i)

    def _llama(self, s: Sampled, i: int) -> int:
        ctx = self.ctx
        if not s.out and s.first is not None:
            tok = LL.llama_sampler_sample(s.first, ctx, i)
            if s.chain is not None:
                LL.llama_sampler_accept(s.chain, tok)
            return int(tok)
        if s.chain is not None:
            return int(LL.llama_sampler_sample(s.chain, ctx, i))
        if s.cut_device:  # greedy over what the device kept: the greatest, the lowest id of equals
            at, n = self._cut(i)
            if n:
                vals = np.ctypeslib.as_array(
                    (ctypes.c_float * n).from_address(LIB.llama_get_logits_ith(ctx, i))
                )
                ids = np.ctypeslib.as_array((ctypes.c_int32 * n).from_address(at))
                return int(ids[vals == vals.max()].min())
        return int(logits_row(LIB, ctx, i, self.n_vocab).argmax())

    @staticmethod
    def _argmax(s: Sampled) -> bool:
        """A greedy row past its first token: numpy's argmax (releases the GIL; no pool)."""
        return s.chain is None and (bool(s.out) or s.first is None)

    def cuttable(self, s: Sampled) -> bool:
        """Past its first token, with no chain (greedy) or a chain that starts with top-k."""
        if s.first is not None and not s.out:
            return False
        if s.cut_device:  # the device's candidates (engine.child.device_cut), greedy or not
            return NATIVE is not None
        return self.native.usable(s.cut if s.chain is not None else 1)

    def _dense(self, base: int, at: list[int], cut: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """The rows of a step whose every token is an output: llama.cpp keeps its outputs in
        batch order (output_reorder, src/llama-context.cpp), row i at ``i`` rows from the first,
        for whole logits and for what a device sampler kept alike (``copy_tensor_async_rows``:
        one vocabulary's stride a row). ``cut``: every row was cut on the device, in one graph
        for all (engine.child.device_cut), so each kept as many candidates as row 0."""
        stride = self.row_bytes
        if cut:
            n = int(LL.llama_get_sampled_logits_count_ith(self.ctx, 0))
            vals = LIB.llama_get_sampled_logits_ith(self.ctx, 0) or 0
            ids = LIB.llama_get_sampled_candidates_ith(self.ctx, 0) or 0
            if n and vals and ids:
                return [vals + i * stride for i in at], [(ids + i * stride, n) for i in at]
        return [base + i * stride for i in at], [(0, 0)] * len(at)  # whole rows

    def _cut(self, i: int) -> tuple[int, int]:
        """(address of the ids, number) of the candidates the device kept for batch row ``i``
        (llama_get_logits_ith then gives their logits); (0, 0): the row is whole."""
        n = int(LL.llama_get_sampled_logits_count_ith(self.ctx, i))
        return (LIB.llama_get_sampled_candidates_ith(self.ctx, i) or 0, n) if n else (0, 0)

    def _pooled(self, rows: Sequence[tuple[int, Sampled]]) -> list[int]:
        return [self._llama(s, i) for i, s in rows]

    def all(self, rows: Sequence[tuple[int, Sampled]], dense: bool = False) -> list[int]:
        """One token per (batch row, slot), in order. ``dense``: every token of the step's batch
        is an output row (generated tokens only): batch row i's logits are then row i of the
        context's logits, with no call per row (llama_get_logits_ith synchronises each time).

        The cuttable rows go to one native call that spreads them over threads; the others
        (a first token, a grammar, a chain that does not start with top-k) to llama.cpp's own
        call on the pool meanwhile. Both release the GIL."""
        out = [0] * len(rows)
        t = time.perf_counter()
        base = LIB.llama_get_logits(self.ctx)  # synchronise and reorder (writes) here, once
        TIMES.reorder_s += time.perf_counter() - t
        n_cut = sum(s.cut_device for _, s in rows)
        TIMES.cut_rows += n_cut
        fast = [j for j, (_, s) in enumerate(rows) if self.cuttable(s)]
        if len(fast) == 1 and rows[fast[0]][1].chain is None and not n_cut:
            fast = []  # a lone greedy whole row: numpy's argmax, below
        # every logits pointer is taken here, before any other thread reads the context
        at = [rows[j][0] for j in fast]
        if dense and base and n_cut in (0, len(rows)):
            ptrs, cut = self._dense(base, at, n_cut > 0)
        else:
            ptrs = [LIB.llama_get_logits_ith(self.ctx, i) for i in at]
            cut = [self._cut(i) if rows[j][1].cut_device else (0, 0) for i, j in zip(at, fast)]
        # rows the device cut to a few candidates each: one thread does them all at once
        self.few = 0 < n_cut == len(rows) and 0 < sum(n for _, n in cut) <= FEW
        native = set(fast)
        argmax = [j for j in range(len(rows)) if j not in native and self._argmax(rows[j][1])]
        taken = native.union(argmax)
        rest = [j for j in range(len(rows)) if j not in taken]
        jobs = []
        if self.pool is not None and rest:
            k = min(self.n_workers - 1, len(rest))
            jobs = [
                (js, self.pool.submit(self._pooled, [rows[j] for j in js]))
                for js in (rest[g::k] for g in range(k))
            ]
        else:
            for j in rest:
                out[j] = self._llama(rows[j][1], rows[j][0])
        for j in argmax:  # numpy's argmax rows meanwhile
            out[j] = self._llama(rows[j][1], rows[j][0])
        if fast:
            t = time.perf_counter()
            toks = self.native.sample(
                ptrs,
                [rows[j][1].chain_at for j in fast],
                [rows[j][1].cut for j in fast],
                cut if n_cut else None,
                threads=1 if self.few else None,
            )
            TIMES.native_s += time.perf_counter() - t
            for j, tok in zip(fast, toks):
                out[j] = tok if tok >= 0 else self._llama(rows[j][1], rows[j][0])
        for js, job in jobs:
            for j, tok in zip(js, job.result()):
                out[j] = tok
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
