"""The rounds of one speculative request: propose, verify in one batch, accept, emit.

``engine.child.speculative`` checks the request and picks the proposer (a draft model, the
model's own MTP heads or an assistant, or an n-gram lookup); :class:`SpecRun` is the loop that
follows, with the correctness rules that module's docstring explains: greedy rows are compared by
argmax, sampled rows by speculative sampling (``engine.child.spec_sampling``), and both caches are
cut back after every round.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from typing import Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.decode import reply_done
from engine.child.draft import Draft
from engine.child.errors import ErrorKind, RequestError
from engine.child.io import DELTA_INTERVAL_S
from engine.child.model import Model
from engine.child.ngram import NgramIndex
from engine.child.sampler import gpu_present
from engine.child.selfdraft import SelfDraft
from engine.child.session import LlamaSession
from engine.child.spec_sampling import accept_or_resample, final_distribution, greedy_token, sample
from engine.core.sampling import RANDOM_SEED, SamplingParams
from engine.protocol import Delta, Done, GenerateRequest, Started

#: Most verify rows on a GPU: CUDA uses its matrix-vector kernels up to batch 8, so a verify
#: batch computes the same logits as single-token decoding (greedy identity).
GPU_MAX_VERIFY = int(os.environ.get("KVDECK_SPEC_MAX_VERIFY", "8"))
_GPU: list[bool] = []


def common_from(a: list[int], b: list[int], start: int) -> int:
    """Length of the common prefix of a and b, known to be at least ``start``."""
    i, lim = start, min(len(a), len(b))
    while i < lim and a[i] == b[i]:
        i += 1
    return i


def verify_cap(m: Model, sd: SelfDraft | None, draft_max: int) -> int:
    """Most draft tokens one sequence may verify per round: the batch, ≤ 8 verify rows on a GPU,
    one per chained head, and n_rs_seq - 1 on a hybrid target (that many positions roll back)."""
    if not _GPU:
        _GPU.append(gpu_present())
    cap = min(m.n_batch - 1, GPU_MAX_VERIFY - 1) if _GPU[0] else m.n_batch - 1
    if sd is not None:
        cap = min(cap, sd.max_k)
    n_rs = int(LL.llama_n_rs_seq(m.ctx))
    if n_rs:
        cap = min(cap, n_rs - 1)
    return max(1, min(draft_max, cap))


class SpecRun:
    """One speculative request: state shared by the rounds (draft, verify, accept, emit)."""

    def __init__(
        self,
        session: LlamaSession,
        m: Model,
        draft: Draft | None,
        req: GenerateRequest,
        s: SamplingParams,
        cancel: threading.Event,
        sd: SelfDraft | None = None,
    ) -> None:
        self.session, self.m, self.draft, self.req, self.s, self.cancel = session, m, draft, req, s, cancel
        self.sd = sd
        self.rng = np.random.default_rng(None if s.seed == RANDOM_SEED else s.seed)
        self.eog = frozenset(m.eog_ids)
        self.k_max = verify_cap(m, sd, req.draft_max)
        self.k = self.k_max
        self.n_dist = max(m.n_vocab, draft.n_vocab if draft else 0)
        self.out: list[int] = []
        self.prompt: list[int] = []
        self.n_drafted = self.n_accepted = self.n_decodes = self.n_verify = 0
        self.drafted_at = [0] * self.k_max  # per draft position: drafted / accepted there
        self.accepted_at = [0] * self.k_max
        self.ngram: NgramIndex | None = None
        self.d_ok = 0  # the draft's cached tokens agree with the target's up to here
        self.pieces = m.pieces
        self.buf = ctypes.create_string_buffer(256)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text: list[str] = []
        self.pending: list[int] = []
        self.flushed = 0
        self.last_flush = time.perf_counter()

    # ------------------------------------------------------------------ helpers
    def _penalty_history(self, extra: list[int]) -> list[int]:
        s = self.s
        # the plain chain has seen the prompt too (engine.child.sampler.feed_prompt)
        return [] if s.repeat_penalty == 1.0 else (self.prompt + self.out)[-s.repeat_last_n :] + extra

    def _row(self, ctx: Any, n_vocab: int) -> np.ndarray:
        return np.ctypeslib.as_array(LL.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def _pick(
        self, row: np.ndarray, extra: list[int], forbid: np.ndarray | None = None
    ) -> tuple[int, np.ndarray | None]:
        """A token from one row as the plain sampler would draw it, and its distribution."""
        hist = self._penalty_history(extra)
        if self.s.greedy:
            return greedy_token(row, self.s, hist, forbid), None
        p = final_distribution(row, self.s, hist, self.n_dist, forbid)
        return sample(p, self.rng), p

    def _push(self, tok: int) -> None:
        piece = self.pieces.get(tok)
        if piece is None:
            piece = self.pieces[tok] = self.m.piece(tok, self.buf)
        self.text.append(self.decoder.decode(piece))
        self.pending.append(tok)
        self.out.append(tok)

    def _flush(self, n_past: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.req.stream or not (final or now - self.last_flush >= DELTA_INTERVAL_S):
            return
        if self.pending or len(self.text) > self.flushed:
            self.session.emit(
                Delta(
                    id=self.req.id,
                    text="".join(self.text[self.flushed :]),
                    tokens=self.pending,
                    n_past=n_past,
                    n_drafted=self.n_drafted,
                    n_accepted=self.n_accepted,
                )
            )
        self.flushed, self.pending, self.last_flush = len(self.text), [], now

    # ------------------------------------------------------------------ proposing
    def _draft_decode(self, tokens: list[int], pos0: int) -> None:
        d = self.draft
        assert d is not None
        b, n_batch = d.batch, int(LL.llama_n_batch(d.ctx))
        for start in range(0, len(tokens), n_batch):
            chunk = tokens[start : start + n_batch]
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos0 + start + i, 1, 0
                b.seq_id[i][0] = 0
            b.logits[len(chunk) - 1] = 1
            b.n_tokens = len(chunk)
            self.m.check(LL.llama_decode(d.ctx, b))
            d.cached.extend(chunk)

    def _propose_model(self, hist: list[int], last: int, k: int) -> tuple[list[int], list[np.ndarray]]:
        """Catch the draft up on what the target accepted, then let it guess k tokens."""
        d = self.draft
        assert d is not None
        n = len(hist)
        c = min(common_from(d.cached, hist, min(self.d_ok, len(d.cached), n)), n)
        if c < len(d.cached):
            if not LL.llama_memory_seq_rm(d.mem, 0, c, -1):
                raise RequestError(ErrorKind.RUNTIME, "the draft's cache could not be rolled back")
            del d.cached[c:]
        self._draft_decode(hist[c:] + [last], c)
        self.d_ok = n + 1
        drafts: list[int] = []
        qs: list[np.ndarray] = []
        for j in range(k):
            tok, q = self._pick(self._row(d.ctx, d.n_vocab), drafts)
            if tok >= self.m.n_vocab:  # only the draft has this id; the target cannot verify it
                break
            drafts.append(tok)
            if q is not None:
                qs.append(q)
            if tok in self.eog or j == k - 1:
                break
            self._draft_decode([tok], n + 1 + j)
        return drafts, qs

    # ------------------------------------------------------------------ verifying
    def _verify(self, toks: list[int], n: int) -> int:
        b = self.m.batch
        for i, tok in enumerate(toks):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, n + i, 1, 1
            b.seq_id[i][0] = 0
        b.n_tokens = len(toks)
        return LL.llama_decode(self.m.ctx, b)

    def _decide(self, drafts: list[int], qs: list[np.ndarray]) -> tuple[int, int]:
        """(number of drafts accepted, the target's own next token) from the verify rows."""
        m, s, L = self.m, self.s, len(drafts)
        rows = np.ctypeslib.as_array(LL.llama_get_logits(m.ctx), shape=(L + 1, m.n_vocab))
        if s.greedy and s.repeat_penalty == 1.0:
            best = rows.argmax(axis=1)
            a = 0
            while a < L and best[a] == drafts[a]:
                a += 1
            return a, int(best[a])
        for i in range(L):
            if s.greedy:
                tok = greedy_token(rows[i], s, self._penalty_history(drafts[:i]))
                if tok != drafts[i]:
                    return i, tok
                continue
            p = final_distribution(rows[i], s, self._penalty_history(drafts[:i]), self.n_dist)
            ok, tok = accept_or_resample(p, qs[i] if self.draft is not None else None, drafts[i], self.rng)
            if not ok:
                return i, tok
        return L, self._pick(rows[L], drafts)[0]

    # ------------------------------------------------------------------ the loop
    def run(self, tokens: list[int], max_tokens: int, t0: float) -> Done:
        session, m, cancel = self.session, self.m, self.cancel
        self.prompt = list(tokens)
        n_reused = m.reuse_prefix(tokens)
        sd = self.sd
        if sd is not None:
            sd.truncate(n_reused)
            sd.prefill(tokens[n_reused:], n_reused, cancel)
        else:
            m.prefill(tokens[n_reused:], n_reused, cancel)
        t_prefill = time.perf_counter()
        session.emit(Started(id=self.req.id, n_prompt=len(tokens), n_reused=n_reused))
        forbid = m.eog if self.req.no_empty else None
        last = self._pick(self._row(m.ctx, m.n_vocab), [], forbid)[0]
        t_first = time.perf_counter()
        hist = m.cached  # exactly the tokens in the target's KV cache
        if self.draft is None and sd is None:
            self.ngram = NgramIndex(hist + [last])
        stop = "eog" if last in self.eog else None
        if stop is None:
            self._push(last)
            stop = "length" if len(self.out) >= max_tokens else None
        while stop is None:
            if cancel.is_set():
                stop = "cancelled"
                break
            n = len(hist)
            k = min(self.k, max_tokens - len(self.out), m.n_ctx_seq - 1 - n)
            if k < 0:
                stop = "context"
                break
            qs: list[np.ndarray] = []
            if k == 0:
                drafts: list[int] = []
            elif sd is not None:
                drafts = sd.draft(last, n, k)
            elif self.draft is not None:
                drafts, qs = self._propose_model(hist, last, k)
            else:
                assert self.ngram is not None
                drafts = self.ngram.propose(k, self.eog)
            rc = self._verify([last] + drafts, n)
            if rc == 1:
                stop = "context"
                break
            m.check(rc)
            if sd is not None:  # while the target's hidden states are this batch's
                sd.process([last] + drafts, n)
            a, nxt = self._decide(drafts, qs)
            for i in range(len(drafts)):
                self.drafted_at[i] += 1
                self.accepted_at[i] += i < a
            self.n_decodes += 1
            self.n_drafted += len(drafts)
            self.n_accepted += a
            self.n_verify += bool(drafts)
            emitted = 0
            for tok in drafts[:a] + [nxt]:
                if tok in self.eog:
                    stop = "eog"
                    break
                self._push(tok)
                emitted += 1
                if len(self.out) >= max_tokens:
                    stop = "length"
                    break
            keep = min(emitted, a)  # the bonus token is not in the cache yet
            if not LL.llama_memory_seq_rm(m.mem, 0, n + 1 + keep, -1):
                raise RequestError(ErrorKind.RUNTIME, "the target's cache could not be rolled back")
            if sd is not None:
                sd.accept(a)
                sd.truncate(n + 1 + keep)
            hist.append(last)
            hist.extend(drafts[:keep])
            if self.ngram is not None:
                self.ngram.extend(drafts[:a] + [nxt])
            last = nxt
            if drafts:  # adaptive k: grow on full acceptance, shrink on a rejection
                if a == len(drafts) == self.k:
                    self.k = min(self.k_max, self.k + 2)
                elif a < len(drafts):
                    self.k = max(1, self.k - 1)
            self._flush(len(hist))
        self.text.append(self.decoder.decode(b"", final=True))
        self._flush(len(hist), final=True)
        return reply_done(
            self.req.id,
            "".join(self.text),
            self.out,
            len(tokens),
            n_reused,
            stop,
            (t0, t_prefill, t_first, time.perf_counter()),
            len(hist) - len(tokens),
            draft=self.req.draft,
            n_drafted=self.n_drafted,
            n_accepted=self.n_accepted,
            n_target_decodes=self.n_decodes,
            acceptance=self.n_accepted / self.n_drafted if self.n_drafted else 0.0,
            mean_accepted=self.n_accepted / self.n_verify if self.n_verify else 0.0,
            drafted_at=list(self.drafted_at),
            accepted_at=list(self.accepted_at),
        )
