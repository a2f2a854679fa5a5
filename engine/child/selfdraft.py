"""Self-drafting: the model's own MTP (nextn) heads, or a Gemma 4 assistant that reads the target's KV.

A transcription of llama.cpp's ``common_speculative_impl_draft_mtp`` (common/speculative.cpp) for
one sequence. Three modes, decided by the drafting context itself:

* **single MTP head** (qwen35, glm4-moe, deepseek...): the MTP context has its own small KV
  (the nextn layers only); each draft token grows it by one position.
* **chained heads** (hy_v3, step35, mimo2): head i drafts token i; every head rebuilds its own
  layer's KV over the draft region (``llama_set_nextn_layer_offset``), so k <= number of heads.
* **shared memory** (gemma4-assistant, ``llama_get_ctx_other(dft) == tgt``): the assistant has no
  KV of its own, it reads the target's; draft tokens all sit at the same position.

The drafter is fed the target's post-norm hidden state ``h_nextn``: the MTP KV at position p holds
(x_p, h_{p-1}). So after *every* target decode (prefill chunks and verify batches) :meth:`process`
must run while the target's nextn rows are still those of that batch. A wrong or missing h only
makes drafts worse, never the output wrong: the target verifies every token.

What a draft step costs: one nextn block plus the LM head over the whole vocabulary for one row
(``n_embd × n_vocab``), exactly as llama.cpp's draft_mtp (it samples from the full logits of the
last token). A catch-up requests no outputs, so it never reaches the head. With a large vocabulary
and a narrow model the head dominates: measured on the CPU, a 131k vocabulary at width 256 makes a
draft step cost 0.95 of a plain decode, a 6k vocabulary 0.6 (benchmarks/mtp_gpu.py, MTP_SMALL).

The drafting context is always built from the target's *resolved* context (n_ctx, n_seq_max,
kv_unified, swa_full, flash attention, K/V types, n_batch/n_ubatch): an assistant whose stream
count differs aborts the process in ggml_view_4d, and a flash-attention mismatch gives wrong
drafts silently. It is created after the target, freed before it, recreated with it.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError
from engine.child.llama_ext import Ext, ext
from engine.child.model import Model, flash_type, ggml_type_id, params_like
from engine.plan.assistant_rules import outgrows

_FLOAT_P = ctypes.POINTER(ctypes.c_float)


def resolved_flash(lines: list[str], asked: str) -> str:
    """The flash-attention choice llama.cpp actually made for a context ("on"/"off"), read from its
    log: "auto" is resolved per device inside llama_init_from_model and no getter exposes it."""
    if asked != "auto":
        return asked
    for line in reversed(lines):
        if "Flash Attention enabled" in line or "enabling flash_attn" in line:
            return "on"
        if "Flash Attention not supported" in line or ("Flash Attention" in line and "disabled" in line):
            return "off"
    return "auto"


def drafting_params(m: Model, settings: Any, flash: str, ctx_other: Any) -> LL.llama_context_params:
    """The drafting context's parameters, taken from the target's live context and never from user
    input or the drafter's own defaults (its training context may be far larger than the fitted
    target's)."""
    cp = params_like(m.ctx)
    cp.flash_attn_type = flash_type(flash)
    cp.type_k, cp.type_v = ggml_type_id(settings.type_k), ggml_type_id(settings.type_v)
    cp.swa_full, cp.kv_unified, cp.offload_kqv = settings.swa_full, settings.kv_unified, settings.offload_kqv
    cp.ctx_type = LL.LLAMA_CONTEXT_TYPE_MTP
    cp.n_rs_seq = 0
    cp.ctx_other = ctx_other
    return cp


def preflight(cp: LL.llama_context_params, m: Model) -> None:
    """Refuse, in one sentence, a drafting context that would not follow the target's size."""
    t = m.ctx
    why = outgrows(
        {
            "context": int(LL.llama_n_ctx(t)),
            "sequences": int(LL.llama_n_seq_max(t)),
            "batch": int(LL.llama_n_batch(t)),
        },
        {"context": int(cp.n_ctx), "sequences": int(cp.n_seq_max), "batch": int(cp.n_batch)},
    )
    if why:
        raise RequestError(ErrorKind.PARAMS, why)


#: One block of a target batch: (sequence, tokens, position of the first), rows contiguous.
Block = tuple[int, list[int], int]
#: One row of a drafting batch: (sequence, token, position, wants logits, hidden state h_{pos-1}).
Row = tuple[int, int, int, bool, np.ndarray]


@dataclass(eq=False)
class SelfDraft:
    """A drafting context (MTP heads or assistant) bound to one target :class:`Model`.

    Every method works per sequence, because the batch loop (engine.child.batch_spec) drafts for
    all its sequences at once, as llama.cpp's server does (one ``common_speculative_draft`` over
    every drafting slot, one ``common_speculative_process`` over the whole target batch). The
    single-sequence loop uses sequence 0."""

    kind: str  # "mtp" (the model's own heads) | "assistant" (gemma4-assistant)
    x: Ext
    target: Model
    ctx: Any
    n_embd: int
    n_heads: int
    shared: bool
    n_vocab: int
    model: Any = None  # the assistant's own weights; None for MTP heads (the target's model)
    path: str = ""
    memory_log: list[str] = field(default_factory=list)
    #: Per sequence: the target's hidden state of the position it names (pairs with the next token).
    pending: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)
    #: Per sequence: the hidden states of its rows in the last target batch, and their first position.
    verify: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mem = LL.llama_get_memory(self.ctx)
        self.bext = LL.llama_batch_ext_init(self.ctx)
        self.chain = self.n_heads > 1 and not self.shared
        self.zeros = np.zeros(self.n_embd, np.float32)
        self.x.set_embeddings_nextn(self.target.ctx, True, False)  # every target row: h_nextn
        self.x.set_embeddings_nextn(self.ctx, True, True)  # the drafter: output rows only

    @property
    def max_k(self) -> int:
        """Most tokens one draft may have: one per head when heads are chained."""
        return self.n_heads if self.chain else 1 << 30

    def free(self) -> None:
        """Free the drafting context (before the target's: an assistant holds views of its KV)."""
        if self.ctx is not None:
            LL.llama_batch_ext_free(self.bext)
            LL.llama_free(self.ctx)
            self.x.set_embeddings_nextn(self.target.ctx, False, False)
        self.ctx = self.bext = None

    # ------------------------------------------------------------------ batches
    def _decode(self, items: list[Row], what: str) -> None:
        b = self.bext
        LL.llama_batch_ext_clear(b)
        pos = (ctypes.c_int32 * 4)()
        for seq, tok, p, out, h in items:
            idx = LL.llama_batch_ext_add_token(b, seq, tok)
            pos[0] = p
            LL.llama_batch_ext_set_pos(b, idx, pos)
            row = np.ascontiguousarray(h, dtype=np.float32)
            LL.llama_batch_ext_set_embd_token(
                b, idx, LL.llama_embd(row.ctypes.data_as(_FLOAT_P), 1, self.n_embd)
            )
            if out:
                LL.llama_batch_ext_set_output_logits(b, idx, True)
        rc = LL.llama_process(self.ctx, LL.LLAMA_PROCESS_TYPE_DECODE, b)
        if rc != 0:
            raise RequestError(
                ErrorKind.RUNTIME,
                f"the {self.kind} drafter failed ({what}, code {rc}): {self.target.log.last_problem()}",
            )

    def _h_for(self, seq: int, pos: int) -> np.ndarray:
        """The target's hidden state of position pos - 1 in ``seq``, or zeros when it is not known
        (after a reused prefix): a weaker draft for one step, never a wrong output."""
        p, h = self.pending.get(seq, (-1, self.zeros))
        return h if p == pos - 1 else self.zeros

    def _rm(self, seq: int, pos: int) -> bool:
        return bool(LL.llama_memory_seq_rm(self.mem, seq, pos, -1))

    # ------------------------------------------------------------------ the driver
    def process_blocks(self, blocks: list[Block]) -> None:
        """Catch the drafter up on one target decode made of ``blocks`` (in batch order; call right
        after it, while the target's nextn rows are that batch's)."""
        n = sum(len(toks) for _s, toks, _p in blocks)
        ptr = self.x.get_embeddings_nextn(self.target.ctx)
        if not ptr:
            raise RequestError(ErrorKind.RUNTIME, "the target did not export its hidden states for drafting")
        h = np.ctypeslib.as_array(ptr, shape=(n, self.n_embd)).copy()
        items: list[Row] = []
        r = 0
        for seq, toks, pos0 in blocks:
            first = self._h_for(seq, pos0)
            items += [
                (seq, t, pos0 + k, False, first if k == 0 else h[r + k - 1]) for k, t in enumerate(toks)
            ]
            self.verify[seq] = (pos0, h[r : r + len(toks)])
            self.pending[seq] = (pos0 + len(toks) - 1, h[r + len(toks) - 1])
            r += len(toks)
        if self.shared:
            return
        for head in range(self.n_heads if self.chain else 1):
            if self.chain:
                for seq, _toks, pos0 in blocks:
                    self._rm(seq, pos0)
                self.x.set_nextn_layer_offset(self.ctx, head)
            self._decode(items, f"catch-up, head {head}")
        if self.chain:
            self.x.set_nextn_layer_offset(self.ctx, 0)

    def draft_many(self, asks: dict[int, tuple[int, int, int]]) -> dict[int, list[int]]:
        """Greedy drafts for several sequences at once: ``asks`` maps a sequence to (its last
        token, that token's position (not yet in the target), at most k tokens)."""
        asks = {seq: (t, p, min(k, self.max_k)) for seq, (t, p, k) in asks.items() if k > 0}
        out: dict[int, list[int]] = {seq: [] for seq in asks}
        items = {seq: [(seq, t, p, True, self._h_for(seq, p))] for seq, (t, p, _k) in asks.items()}
        chain_h = {seq: [rows[0][4]] for seq, rows in items.items()}
        live = list(asks)
        try:
            for i in range(max((k for _t, _p, k in asks.values()), default=0)):
                if not live:
                    break
                if self.chain:
                    for seq in live:
                        self._rm(seq, asks[seq][1])
                    self.x.set_nextn_layer_offset(self.ctx, i)
                batch = [row for seq in live for row in items[seq]]
                self._decode(batch, f"draft step {i}")
                at, idx = {}, 0
                for seq in live:
                    idx += len(items[seq])
                    at[seq] = idx - 1  # the batch index of the sequence's output row
                still = []
                for seq in live:
                    t0, pos0, k = asks[seq]
                    logits = np.ctypeslib.as_array(
                        LL.llama_get_logits_ith(self.ctx, at[seq]), shape=(self.n_vocab,)
                    )
                    tok = int(logits.argmax())
                    out[seq].append(tok)
                    if i == k - 1 or tok >= self.target.n_vocab:
                        continue
                    hp = self.x.get_embeddings_nextn_ith(self.ctx, at[seq])
                    h = np.ctypeslib.as_array(hp, shape=(self.n_embd,)).copy()
                    if self.chain:  # the whole prefix again: the next head rebuilds its own layer's KV
                        chain_h[seq].append(h)
                        toks = [t0] + out[seq]
                        items[seq] = [
                            (seq, t, pos0 + j, j == len(toks) - 1, chain_h[seq][j])
                            for j, t in enumerate(toks)
                        ]
                    elif self.shared:  # the assistant: every draft token at the same position
                        items[seq] = [(seq, tok, pos0, True, h)]
                    else:
                        items[seq] = [(seq, tok, pos0 + i + 1, True, h)]
                    still.append(seq)
                live = still
        finally:
            if self.chain:
                self.x.set_nextn_layer_offset(self.ctx, 0)
            if not self.shared:  # the catch-up of the verify batch re-adds these positions
                for seq, (_t, pos0, _k) in asks.items():
                    self._rm(seq, pos0)
        return {seq: [t for t in toks if t < self.target.n_vocab] for seq, toks in out.items()}

    def accept(self, n_accepted: int, seq: int = 0) -> None:
        """The hidden state of the last accepted position pairs with the target's next token."""
        if seq in self.verify:
            pos0, h = self.verify[seq]
            i = min(n_accepted, len(h) - 1)
            self.pending[seq] = (pos0 + i, h[i])

    def truncate(self, n: int, seq: int = 0) -> None:
        """Drop the drafter's positions of ``seq`` from n on (the shared assistant has none of its
        own). Where the drafter missed some of the target's decodes of that sequence (a reply made
        without drafting), its cache cannot continue at n: the sequence is emptied instead, and it
        restarts there (weaker drafts for a while, never a wrong output)."""
        if self.shared:
            return
        if not self._rm(seq, n) or int(LL.llama_memory_seq_pos_max(self.mem, seq)) != n - 1:
            self._rm(seq, 0)
            self.pending.pop(seq, None)

    # ------------------------------------------------------------------ one sequence (sequence 0)
    def process(self, toks: list[int], pos0: int) -> None:
        """Catch the drafter up on a target decode of ``toks`` at ``pos0``.. (call right after it)."""
        self.process_blocks([(0, toks, pos0)])

    def draft(self, id_last: int, pos0: int, k: int) -> list[int]:
        """Up to k greedy draft tokens after ``id_last`` (at ``pos0``, not yet in the target)."""
        return self.draft_many({0: (id_last, pos0, k)}).get(0, [])

    def prefill(self, tokens: list[int], pos0: int, cancel: Any) -> None:
        """The target's prefill chunk by chunk, each followed by the drafter's catch-up."""
        m = self.target
        for start in range(0, len(tokens), m.n_batch):
            chunk = tokens[start : start + m.n_batch]
            m.prefill(chunk, pos0 + start, cancel)
            self.process(chunk, pos0 + start)


def create(
    kind: str, m: Model, settings: Any, flash: str, log: Any, model: Any = None, path: str = ""
) -> SelfDraft:
    """A drafting context for target ``m``: the target's own heads (``model`` None) or an assistant."""
    x = ext()
    if isinstance(x, str):
        raise RequestError(ErrorKind.PARAMS, x)
    dmodel = model if model is not None else m.model
    n_nextn = int(LL.llama_model_n_layer_nextn(dmodel))
    if n_nextn == 0:
        raise RequestError(
            ErrorKind.PARAMS,
            f"{_name(m.path)} has no MTP (nextn) layers, so it cannot draft for itself; drafting is off",
        )
    n_embd = int(LL.llama_model_n_embd_out(dmodel))
    t_embd = int(LL.llama_model_n_embd_out(m.model))
    if n_embd != t_embd:
        raise RequestError(
            ErrorKind.PARAMS,
            f"the drafter's output size {n_embd} differs from the target's hidden "
            f"size {t_embd}; drafting is off",
        )
    cp = drafting_params(m, settings, flash, m.ctx)
    what = "the MTP drafting context" if model is None else f"the assistant's context ({_name(path)})"
    preflight(cp, m)
    log.recent_errors = []
    ctx = LL.llama_init_from_model(dmodel, cp)
    if not ctx:
        why = log.failure_reason("unknown reason")
        raise RequestError(
            ErrorKind.PARAMS, f"could not create {what} of {cp.n_ctx} tokens (the target's): {why}"
        )
    other = x.get_ctx_other(ctx)
    shared = bool(other) and int(other) == int(m.ctx)  # type: ignore[call-overload]  # ctypes handles
    sd = SelfDraft(
        kind=kind,
        x=x,
        target=m,
        ctx=ctx,
        n_embd=n_embd,
        n_heads=max(1, n_nextn),
        shared=shared,
        n_vocab=int(LL.llama_vocab_n_tokens(LL.llama_model_get_vocab(dmodel))),
        model=model,
        path=path,
    )
    if int(LL.llama_n_ctx(ctx)) != m.n_ctx:
        sd.free()
        raise RequestError(
            ErrorKind.PARAMS,
            f"{what} got {LL.llama_n_ctx(ctx)} tokens of context, not the "
            f"target's {m.n_ctx}; drafting is off",
        )
    return sd


def _name(path: str) -> str:
    return os.path.basename(path)
