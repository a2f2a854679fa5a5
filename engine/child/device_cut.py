"""The batch loop's candidate cut on the device: a llama.cpp backend sampler of our own.

Why: at sixteen sequences a step's sampling read 16 rows of 128k logits on the host (1.3 ms
inside the server on the H100 run, benchmarks/results/server-2026-12-05-h100-native.json) after
the device had copied them there (7.8 MiB a step); llama-batched-bench samples nothing. The
native sampler's idea (engine/child/rowsample.c) runs on the device instead, as ggml operations
in the decode graph (engine.child.device_cut_ops): each row's k best tokens, found through its
64-token chunks' maxima, come back as k logits and their token ids, and the request's own CPU
chain, which starts with top-k, samples from those (``llama_get_sampled_logits_ith`` and
``_candidates_ith``, src/llama-context.cpp), or a greedy reply takes the greatest, so the token
is the one the full row gives, but for exact ties in the k best. The whole rows are then not copied to the host at all
(``needs_raw_logits``), and sixteen rows of 42 tokens take one thread a few microseconds each.

llama.cpp's own backend top-k cannot stand in: on CUDA it is one CUB top-k call per row over the
whole vocabulary, or a full argsort where CUB's top-k is missing (ggml/src/ggml-cuda/top-k.cu).

The sampler is attached as a chain per sequence (``llama_set_sampler``) like the device chains
of engine.child.batch_backend; llama.cpp calls ``backend_apply`` once per sequence while it
builds a graph (graphs are reused between steps), so Python runs there, never per step. The
first sequence's call cuts every row of the step at once (``cut_rows``: llama.cpp hands each
sampler a view of its row in the step's logits, and the view names that tensor), and each
sequence takes its row of the result: a cut per sequence added 0.4 ms of small kernels to a
16-sequence step on an H200 (sampling 0.22 ms against the native sampler's 0.21 ms on whole
rows: benchmarks/results/server-2026-12-05-h200.json, step-sampling-2026-12-05-h200.json).
``backend_init`` asks the device whether it supports every operation (as llama.cpp's own
samplers do), so a device that cannot leaves the rows whole. ``KVDECK_DEVICE_CUT``: ``1``
always (tests, on the CPU backend), ``0`` never, else (``auto``) where the logits are on a GPU
and :data:`MIN_SEQS` sequences decode together.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.batch_backend import SeqChains
from engine.child.batch_sample import TIMES, Switch
from engine.child.device_cut_ops import LAYOUT_OK, Tensor, cut, cut_rows, on_gpu, row_of, supported, view_1d
from engine.child.model import Model
from engine.child.slots import Slot
from engine.child.topk_cut import worth_cutting

#: ``KVDECK_DEVICE_CUT``: ``1`` always, ``0`` never, else (``auto``) where it pays: the logits
#: on a GPU, and :data:`MIN_SEQS` sequences decoding together.
CUT = Switch("KVDECK_DEVICE_CUT")


def enabled() -> bool:
    """Whether the batch loop attaches the cut at all."""
    return CUT.mode != "0"


class ChunkCut:
    """One sampler of the cut for top-k ``k``; :meth:`chain` wraps it for ``llama_set_sampler``.

    The callbacks live as long as this object; the chain's ``free`` drops it from ``_LIVE``.
    ``_STEP`` holds the graph being built's cut of every row (its logits tensor -> results),
    made by the first sampler llama.cpp applies and emptied as each build starts
    (``backend_reset``, called on every attached sampler first)."""

    _LIVE: dict[int, ChunkCut] = {}
    _STEP: dict[int, tuple[int, int, int]] = {}

    def __init__(self, k: int) -> None:
        self.k = k
        self.on_device: bool | None = None  # what backend_init found (llama_set_sampler calls it)
        self.name = f"kvdeck-chunk-cut-{k}".encode()
        self.iface = LL.llama_sampler_i(
            name=LL.llama_sampler_i_name(lambda _s: self.name),
            accept=LL.llama_sampler_i_accept(),
            apply=LL.llama_sampler_i_apply(lambda _s, _cur: None),  # on the CPU: keeps every token
            reset=LL.llama_sampler_i_reset(),
            clone=LL.llama_sampler_i_clone(),
            free=LL.llama_sampler_i_free(self._free),
            backend_init=LL.llama_sampler_i_backend_init(self._init),
            backend_accept=LL.llama_sampler_i_backend_accept(),
            backend_apply=LL.llama_sampler_i_backend_apply(self._apply),
            backend_set_input=LL.llama_sampler_i_backend_set_input(),
            backend_reset=LL.llama_sampler_i_backend_reset(self._reset),
            copy_state=LL.llama_sampler_i_copy_state(),
        )
        self.smpl = LL.llama_sampler_init(ctypes.byref(self.iface), None)
        ChunkCut._LIVE[id(self)] = self

    def _init(self, _s: object, buft: int, _n: int) -> bool:
        self.on_device = supported(buft, self.k) and CUT(on_gpu(buft))
        return self.on_device

    def _reset(self, _s: object) -> None:
        ChunkCut._STEP.clear()

    def _apply(self, _s: object, ctx: int, _gf: int, data: Any) -> None:
        d = data.contents
        at = row_of(d.logits) if LAYOUT_OK and not d.candidates else None
        if at is None:  # not a plain row of the step's logits: this row alone
            d.logits, d.candidates = cut(ctx, d.logits, d.candidates, self.k)
            return
        logits, row = at
        done = ChunkCut._STEP.get(logits)
        if done is None:  # the first sequence: every row at once, for the widest k attached
            k = max(c.k for c in ChunkCut._LIVE.values())
            if not worth_cutting(k, Tensor.from_address(logits).ne[0]):
                return
            done = ChunkCut._STEP[logits] = (*cut_rows(ctx, logits, k), k)
        vals, ids, k = done
        d.logits = view_1d(ctx, vals, k, row * k * 4)
        d.candidates = view_1d(ctx, ids, k, row * k * 4)

    def _free(self, _s: object) -> None:
        ChunkCut._LIVE.pop(id(self), None)

    def chain(self) -> object:
        """A chain holding this cut (llama_set_sampler takes chains only; it owns the cut)."""
        chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
        LL.llama_sampler_chain_add(chain, self.smpl)
        return chain


#: What a greedy reply asks the device to keep on a sequence without a cut: llama-server's
#: default top-k, so that the next request there, likely that default, finds the cut it needs.
DEFAULT_K = 40

#: The cut goes on once this many sequences decode together. At one sequence its kernels cost
#: more than the copy of one row saves (3.30 against 3.13 ms a step on an H100, 2026-12-05,
#: benchmarks/results/server-2026-12-05-h100-cut-all.json); at four it breaks even, and at
#: sixteen it takes 0.19 ms off the decode and 0.11 ms off sampling. Attaching rebuilds the
#: graphs, 44 ms of a first token on the H200 8B (server-2026-12-05-h200-ubatch.json), which a
#: few clients would pay at every burst.
MIN_SEQS = 8


class SeqCuts(SeqChains):
    """The cut attached per sequence (engine.child.batch_backend.SeqChains keeps one chain per
    sequence while the next request there may use it too: attaching rebuilds the graphs)."""

    def __init__(self, m: Model) -> None:
        super().__init__(m, build=self._build)
        self.n_eog = len(m.eog_ids)
        self.made: ChunkCut | None = None

    def placed(self, slots: list[Slot | None], new: list[Slot]) -> None:
        """The cut for ``new`` slots just placed among ``slots`` (the batch loop's), and for
        every busy one once :data:`MIN_SEQS` decode together (always with
        ``KVDECK_DEVICE_CUT=1``)."""
        busy = [s for s in slots if s is not None]
        attach = CUT(len(busy) >= MIN_SEQS)
        for s in busy if attach else new:
            self.place(s, attach)

    def _build(self, spec: Any) -> object:
        TIMES.cut_attached += 1
        self.made = ChunkCut(spec[0][1])
        return self.made.chain()

    def k_for(self, s: Slot) -> int:
        """The fewest best tokens the device must keep for the request on ``s``, 0 for whole
        rows. Only a CPU chain that starts with top-k (``Slot.cut``: no grammar; a penalty that
        only lowers logits starts with its own wider top-k, engine.child.sampler.chain_spec), or
        none (greedy: its token is the greatest logit), samples the same from the k best;
        log-probabilities read the whole row; drafting puts several rows of one sequence in a
        step (llama.cpp refuses those with a sampler attached). The k best of a first token
        exclude the end-of-generation tokens (its chain biases them away before its top-k), so
        the device keeps that many more."""
        greedy = s.chain is None and not s.device
        if not (s.cut or greedy) or s.w.req.logprobs >= 0 or s.w.req.draft:
            return 0
        k = (s.cut or 1) + self.n_eog
        return k if worth_cutting(k, self.m.n_vocab) else 0

    def place(self, s: Slot, attach: bool) -> None:
        """Attach the cut for ``s`` to its sequence where ``attach`` (enough sequences decode
        together: :data:`MIN_SEQS`), keep one already there that keeps enough (attaching rebuilds
        the graphs: greedy replies and llama-server's default top-k 40 take turns on a sequence
        without a rebuild), or detach it: the rows must be whole."""
        need = 0 if self.m.cut_refused else self.k_for(s)
        have = self.attached.get(s.seq)
        kept = int(have[0][0][1]) if have is not None else 0
        if need and kept >= need:
            k = kept
        elif need and attach:
            k = max(need, DEFAULT_K + self.n_eog)
            k = k if worth_cutting(k, self.m.n_vocab) else need
        else:
            k = 0
        self.made = None
        s.cut_device = self.use(s.seq, (("chunk-cut", k),) if k else None) is not None
        if self.made is not None and not self.made.on_device:  # attached now, but not offloaded
            self.m.cut_refused, s.cut_device = True, False
            self.drop(s.seq)
