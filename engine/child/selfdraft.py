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
(x_p, h_{p-1}), and a draft attends to every position before it (the nextn block is an attention
layer over the MTP context's own KV: ``build_attn_inp_kv`` in src/models/qwen35.cpp's MTP graph,
fed ``concat(enorm(embd(x)), hnorm(h))``). So no position can be skipped, and its h is readable
only right after the target decode that made it (the next decode overwrites the nextn rows):
after *every* target decode (prefill chunks and verify batches) :meth:`process_blocks` must run
while the target's nextn rows are still those of that batch. It copies them and defers the
drafter's own decode (the catch-up) to a per-sequence backlog, decoded when that sequence drafts
next (in the same decode as its first draft token, where heads are not chained) or when the
backlog reaches :data:`BACKLOG` rows. llama.cpp's server catches up on the whole batch after
every decode (server-context.cpp, after ``llama_process``: ``common_speculative_process`` with a
TODO to avoid it, TAG_SPEC_AVOID_DRAFT_REEVAL); deferring gives the drafter the same KV but
costs a sequence that does not draft one catch-up per BACKLOG tokens instead of one per step, and
mostly skips the rejected drafts of a verify batch (cut from the backlog before they are decoded,
unless a flush came between). A wrong or missing h only makes drafts
worse, never the output wrong: the target verifies every token.

What a draft step costs: one nextn block plus the LM head over the whole vocabulary for one row
(``n_embd × n_vocab``), exactly as llama.cpp's draft_mtp (it samples from the full logits of the
last token). A catch-up requests no outputs, so it never reaches the head. With a large vocabulary
and a narrow model the head dominates: measured on the CPU, a 131k vocabulary at width 256 makes a
draft step cost 0.95 of a plain decode, a 6k vocabulary 0.6 (benchmarks/mtp_gpu.py, MTP_SMALL).

The drafting context itself is made from the target's resolved context in
engine.child.selfdraft_context.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError
from engine.child.llama_ext import Ext
from engine.child.model import Model

_FLOAT_P = ctypes.POINTER(ctypes.c_float)

#: Most rows a sequence's catch-up waits for before it is decoded anyway: what keeps the cost of a
#: sequence that never drafts bounded (one catch-up decode per this many tokens, all such
#: sequences together) and its copied hidden states small (BACKLOG x n_embd floats).
BACKLOG = 64


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
    #: Per sequence: rows the target decoded that the drafter has not (contiguous positions, each
    #: with its h already paired); decoded before the sequence's next draft (:meth:`catch_up`).
    backlog: dict[int, list[Row]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mem = LL.llama_get_memory(self.ctx)
        self.bext = LL.llama_batch_ext_init(self.ctx)
        self.n_batch = int(LL.llama_n_batch(self.ctx))
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
        self._fill(items, what)
        self._run(what)

    def _fill(self, items: list[Row], what: str) -> None:
        """Put ``items`` in the drafting batch. llama.cpp copies each row's h into the batch, and a
        filled batch can be decoded again (once per chained head, as common_speculative does).
        Per row this is a few ctypes calls: the hidden states are stacked once and addressed by
        offset, since a numpy ``.ctypes`` view per row costs more than the calls themselves."""
        b = self.bext
        LL.llama_batch_ext_clear(b)
        hs = np.stack([h for *_r, h in items]).astype(np.float32, copy=False)
        base, stride = hs.ctypes.data, hs.strides[0]
        pos = (ctypes.c_int32 * 4)()
        embd = LL.llama_embd(None, 1, self.n_embd)
        for i, (seq, tok, p, out, _h) in enumerate(items):
            idx = LL.llama_batch_ext_add_token(b, seq, tok)
            if idx < 0:  # more rows than n_batch: a bug here, not the user's input
                raise RequestError(ErrorKind.RUNTIME, f"the {self.kind} drafter's batch is full ({what})")
            pos[0] = p
            LL.llama_batch_ext_set_pos(b, idx, pos)
            embd.data = ctypes.cast(base + i * stride, _FLOAT_P)
            LL.llama_batch_ext_set_embd_token(b, idx, embd)
            if out:
                LL.llama_batch_ext_set_output_logits(b, idx, True)

    def _run(self, what: str) -> None:
        rc = LL.llama_process(self.ctx, LL.LLAMA_PROCESS_TYPE_DECODE, self.bext)
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
        """Take one target decode made of ``blocks`` (in batch order; call right after it, while
        the target's nextn rows are that batch's): its hidden states are copied and its rows
        join each sequence's backlog (decoded by :meth:`catch_up`)."""
        n = sum(len(toks) for _s, toks, _p in blocks)
        ptr = self.x.get_embeddings_nextn(self.target.ctx)
        if not ptr:
            raise RequestError(ErrorKind.RUNTIME, "the target did not export its hidden states for drafting")
        h = np.ctypeslib.as_array(ptr, shape=(n, self.n_embd)).copy()
        r = 0
        for seq, toks, pos0 in blocks:
            if not self.shared:  # an assistant has no KV of its own: nothing to catch up
                first = self._h_for(seq, pos0)
                rows = self.backlog.setdefault(seq, [])
                while rows and rows[-1][2] >= pos0:  # a position decoded again replaces its row
                    rows.pop()
                rows += [
                    (seq, t, pos0 + k, False, first if k == 0 else h[r + k - 1]) for k, t in enumerate(toks)
                ]
            self.verify[seq] = (pos0, h[r : r + len(toks)])
            self.pending[seq] = (pos0 + len(toks) - 1, h[r + len(toks) - 1])
            r += len(toks)
        if any(len(rows) >= BACKLOG for rows in self.backlog.values()):
            self.catch_up()  # every backlog at once: one decode for all of them

    def catch_up(self, seqs: list[int] | None = None) -> None:
        """Decode the backlogs of ``seqs`` (every sequence when None) in the drafter, n_batch rows
        at a time; with chained heads once per head, each rebuilding its own layer's KV."""
        rows = [
            row for seq in (list(self.backlog) if seqs is None else seqs) for row in self.backlog.pop(seq, [])
        ]
        for start in range(0, len(rows), self.n_batch):
            items = rows[start : start + self.n_batch]
            self._fill(items, "catch-up")
            for head in range(self.n_heads if self.chain else 1):
                if self.chain:
                    for seq, p in self._starts(items).items():
                        self._rm(seq, p)
                    self.x.set_nextn_layer_offset(self.ctx, head)
                try:
                    self._run(f"catch-up, head {head}")
                finally:
                    if self.chain:
                        self.x.set_nextn_layer_offset(self.ctx, 0)

    @staticmethod
    def _starts(items: list[Row]) -> dict[int, int]:
        """The first position of each sequence's rows in ``items``."""
        out: dict[int, int] = {}
        for seq, _t, p, _o, _h in items:
            out.setdefault(seq, p)
        return out

    def draft_many(self, asks: dict[int, tuple[int, int, int]]) -> dict[int, list[int]]:
        """Greedy drafts for several sequences at once: ``asks`` maps a sequence to (its last
        token, that token's position (not yet in the target), at most k tokens)."""
        asks = {seq: (t, p, min(k, self.max_k)) for seq, (t, p, k) in asks.items() if k > 0}
        out: dict[int, list[int]] = {seq: [] for seq in asks}
        items = {seq: [(seq, t, p, True, self._h_for(seq, p))] for seq, (t, p, _k) in asks.items()}
        chain_h = {seq: [rows[0][4]] for seq, rows in items.items()}
        late = sum(len(self.backlog.get(seq, ())) for seq in asks)
        if self.chain or late + len(asks) > self.n_batch:
            self.catch_up(list(asks))  # every head catches up before head 0 drafts
        else:  # the catch-up rides in the first draft decode (positions before each draft row)
            for seq in asks:
                items[seq] = self.backlog.pop(seq, []) + items[seq]
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
        """Drop the drafter's positions of ``seq`` from n on, in its cache and its backlog (the
        shared assistant has none of its own). Where the drafter missed some of the target's
        decodes of that sequence (a reply made without drafting), its cache cannot continue at n:
        the sequence is emptied instead, and it restarts there (weaker drafts for a while, never a
        wrong output)."""
        if self.shared:
            return
        rows = [row for row in self.backlog.pop(seq, []) if row[2] < n]
        start = rows[0][2] if rows else n  # the cache holds what comes before the backlog
        ok = self._rm(seq, start)
        end = int(LL.llama_memory_seq_pos_max(self.mem, seq))
        # a backlog may also start an emptied sequence (llama.cpp takes any first position there)
        if (
            ok
            and (end == start - 1 or (rows and end < 0))
            and all(r[2] == start + i for i, r in enumerate(rows))
            and start + len(rows) == n  # cache and backlog end where the target does
        ):
            if rows:
                self.backlog[seq] = rows
            return
        self._rm(seq, 0)
        self.pending.pop(seq, None)

    # ------------------------------------------------------------------ one sequence (sequence 0)
    def process(self, toks: list[int], pos0: int) -> None:
        """Take a target decode of ``toks`` at ``pos0``.. (call right after it)."""
        self.process_blocks([(0, toks, pos0)])

    def draft(self, id_last: int, pos0: int, k: int) -> list[int]:
        """Up to k greedy draft tokens after ``id_last`` (at ``pos0``, not yet in the target)."""
        return self.draft_many({0: (id_last, pos0, k)}).get(0, [])

    def prefill(self, tokens: list[int], pos0: int, cancel: Any) -> None:
        """The target's prefill chunk by chunk, each followed by :meth:`process`."""
        m = self.target
        for start in range(0, len(tokens), m.n_batch):
            chunk = tokens[start : start + m.n_batch]
            m.prefill(chunk, pos0 + start, cancel)
            self.process(chunk, pos0 + start)
