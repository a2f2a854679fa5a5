"""Continuous batching: several requests decoded together on one context, one sequence each.

Why: a decode step over a small batch costs little more than one token (the weights are read
once per step either way), so N clients decoding together get far more tokens per second than
N clients taking turns. llama.cpp does the batching; this loop only schedules it.

The context is loaded with n_seq_max = N and slot i is llama.cpp sequence i. Every step builds
ONE llama_batch: first one token per generating sequence (they must not wait behind a long
prompt), then prefill chunks of admitted prompts in arrival order, never more than n_batch
tokens in all (more aborts the process). Each sequence samples its own output row with its own
CPU sampler chain (with llama.cpp's grammar sampler first for constrained requests,
engine.child.grammar), seeded per request; a sequence is free the moment its request ends (end
of generation, max_tokens, a stop string, a cancel, a client that went away), so a waiting
request starts on the next step. Its cells stay for a request sharing the prefix
(engine.child.prefix).

Between steps the request queue is polled without blocking, so new requests and cancels join
the running batch. A request the loop cannot run beside the others (a load, a benchmark, a
speculative generation) stops admission: the sequences still running finish (or are cancelled
when the model is going away) and the message goes back to the child's main loop.

Runs only in the runtime child, on its main thread (nothing in llama.cpp is safe against a
concurrent decode). A one-sequence context only comes here when a request asks (``serve``, a
grammar, log-probabilities); sequence 0's prefix list is the single-sequence loop's
(engine.child.decode), so both loops agree on what the cache holds.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import logging
import queue
import time
from collections.abc import Callable

import llama_cpp.llama_cpp as LL
import numpy as np

from engine import protocol as P
from engine.child.errors import ErrorKind, RequestError, error_event
from engine.child.grammar import (
    gbnf_for,
    grammar_sampler,
    logits_row,
    logprob_entry,
    prepend,
)
from engine.child.io import Requests
from engine.child.prefix import SeqPrefixes
from engine.child.sampler import build_chain
from engine.child.session import LlamaSession
from engine.child.slots import Slot, StopText, Waiting, sampler_specs
from engine.core.errors import KvDeckError
from engine.core.sampling import SamplingParams

log = logging.getLogger(__name__)
Emit = Callable[[object], None]

_DELTA_INTERVAL_S = 0.02
_SLOTS_INTERVAL_S = 0.25
#: Messages that replace or drop the model: the running sequences are cancelled, not finished.
_ENDS_MODEL = (P.LoadRequest, P.UnloadRequest, P.ShutdownRequest, P.LoadDraftRequest, P.UnloadDraftRequest)

# Our own handle so the logits pointer comes back as a plain int (llama_cpp's function objects
# are shared with the rest of the child and keep their restypes).
_LIB = ctypes.CDLL(LL._lib._name)
_LIB.llama_get_logits_ith.restype = ctypes.c_void_p
_LIB.llama_get_logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]


def batch_wanted(session: LlamaSession, req: P.GenerateRequest) -> bool:
    """Whether this generation belongs to the batch loop rather than the single-sequence one."""
    m = session.model
    if m is None or req.draft:
        return False
    # Grammars and log-probabilities are implemented here only, so such requests come here too.
    return req.serve or m.n_seq_max > 1 or bool(req.grammar or req.json_schema) or req.logprobs >= 0


class BatchLoop:
    """Schedules every admitted request of one run; created per run by :func:`run_batch`."""

    def __init__(self, session: LlamaSession, requests: Requests, emit: Emit) -> None:
        m = session.require()
        self.s, self.m, self.requests, self.emit = session, m, requests, emit
        self.n_seq = int(LL.llama_n_seq_max(m.ctx))
        self.n_batch = int(LL.llama_n_batch(m.ctx))
        self.n_ctx_seq = int(LL.llama_n_ctx_seq(m.ctx))
        self.slots: list[Slot | None] = [None] * self.n_seq
        self.waiting: collections.deque[Waiting] = collections.deque()
        self.stopping = False
        self.deferred: list[P.Message | None] = []
        self.eog = frozenset(m.eog_ids)
        self.row_t = ctypes.c_float * m.n_vocab
        self.pieces: dict[int, bytes] = {}
        self.buf = ctypes.create_string_buffer(256)
        self.last_report = 0.0
        session.samplers.detach(m)  # a device chain on sequence 0 would replace that row's logits
        self.prefixes = SeqPrefixes(m, self.n_seq)  # per-slot prefix reuse (engine.child.prefix)
        self.batch = LL.llama_batch_init(self.n_batch, 0, 1)
        b = self.batch
        for i in range(self.n_batch):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        self.row_seq = [0] * self.n_batch
        n = self.n_batch
        self.tok_a = np.ctypeslib.as_array(b.token, (n,))
        self.pos_a = np.ctypeslib.as_array(b.pos, (n,))
        self.out_a = np.ctypeslib.as_array(b.logits, (n,))

    # ------------------------------------------------------------------ requests
    def accept(self, req: P.GenerateRequest) -> None:
        """Tokenise and check a request at once, so a bad one is refused without waiting."""
        cancel = self.requests.cancel_event(req.id)
        grammar = None
        try:
            sampling = SamplingParams.from_dict(req.sampling)
            tokens = self.s.tokenize(req.prompt)
            if not tokens:
                raise RequestError(ErrorKind.PARAMS, "the prompt is empty")
            if self.n_ctx_seq - len(tokens) < 2:
                raise RequestError(
                    ErrorKind.CONTEXT,
                    f"the prompt is {len(tokens)} tokens long but each sequence holds {self.n_ctx_seq}",
                )
            gbnf = gbnf_for(req.grammar, req.json_schema)
            if gbnf:
                grammar = grammar_sampler(self.m.vocab, gbnf)
        except (RequestError, KvDeckError) as exc:
            self.emit(error_event(req.id, exc))
            self.requests.finished(req.id)
            return
        self.waiting.append(Waiting(req, tokens, sampling, cancel, time.perf_counter(), grammar))

    def poll(self) -> None:
        """Take every queued message without blocking; generations join, others stop admission."""
        while not self.stopping:
            try:
                msg = self.requests.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, P.GenerateRequest) and batch_wanted(self.s, msg):
                self.accept(msg)
            elif isinstance(msg, (P.TokenizeRequest, P.StatsRequest, P.DetokenizeRequest)):
                self._answer(msg)
            else:
                self.stopping = True
                self.deferred.append(msg)
                if msg is None or isinstance(msg, _ENDS_MODEL):
                    for w in [*self.waiting, *(s.w for s in self.slots if s)]:
                        w.cancel.set()

    def _answer(self, msg: P.Message) -> None:
        req_id = getattr(msg, "id", 0)
        try:
            if isinstance(msg, P.TokenizeRequest):
                self.emit(P.Tokens(id=req_id, tokens=self.s.tokenize(msg.text, msg.add_special)))
            elif isinstance(msg, P.DetokenizeRequest):
                from engine.child.embed import detokenize

                self.emit(P.Detokenized(id=req_id, text=detokenize(self.m, msg.tokens)))
            else:
                self.emit(self.s.stats(req_id))
        except RequestError as exc:
            self.emit(error_event(req_id, exc))

    def admit(self) -> None:
        while self.waiting:
            free = [i for i in range(self.n_seq) if self.slots[i] is None]
            if not free:
                return
            w = self.waiting.popleft()
            if w.cancel.is_set():
                if w.grammar is not None:
                    LL.llama_sampler_free(w.grammar)
                self.emit(error_event(w.req.id, kind=ErrorKind.CANCELLED, message="cancelled"))
                self.requests.finished(w.req.id)
                continue
            i, reuse = self.prefixes.place(free, w.prompt)
            main, first = sampler_specs(
                w.sampling, w.req.sampling, tuple(self.m.eog_ids), w.req.no_empty and w.grammar is None
            )
            chain = build_chain(main, self.m.n_vocab) if main else None
            if w.grammar is not None:  # the grammar decides first; its sampler now owned by the chain
                chain, w.grammar, first = prepend(w.grammar, chain), None, None
            self.slots[i] = s = Slot(
                w,
                i,
                max(1, min(w.req.max_tokens, self.n_ctx_seq - len(w.prompt))),
                chain,
                build_chain(first, self.m.n_vocab) if first else None,
                StopText(list(getattr(w.req, "stop", []) or [])),
                codecs.getincrementaldecoder("utf-8")("replace"),
            )
            s.n_fed = s.n_past = s.n_reused = reuse
            self.report(force=True)

    # ------------------------------------------------------------------ one step
    def _rows(self, n: int, k: int, seq: int) -> None:
        """Point rows n..n+k at ``seq``; only rows whose sequence changed are written."""
        b, row_seq = self.batch, self.row_seq
        for r in range(n, n + k):
            if row_seq[r] != seq:
                b.seq_id[r][0] = seq
                row_seq[r] = seq

    def step(self) -> None:
        active = [s for s in self.slots if s is not None and not s.finish]
        tok_a, pos_a, out_a = self.tok_a, self.pos_a, self.out_a
        n = 0
        rows: list[tuple[int, Slot]] = []
        fed: list[tuple[Slot, int]] = []
        for s in active:  # one token per generating sequence first
            if s.next_tok >= 0:
                tok_a[n], pos_a[n], out_a[n] = s.next_tok, s.n_past, 1
                self._rows(n, 1, s.seq)
                rows.append((n, s))
                fed.append((s, 0))
                n += 1
        for s in sorted(active, key=lambda s: s.w.t0):  # then prompt chunks, oldest first
            left = len(s.w.prompt) - s.n_fed
            if s.next_tok >= 0 or left <= 0 or n >= self.n_batch:
                continue
            k = min(left, self.n_batch - n)
            tok_a[n : n + k] = s.w.prompt[s.n_fed : s.n_fed + k]
            pos_a[n : n + k] = np.arange(s.n_fed, s.n_fed + k, dtype=np.int32)
            out_a[n : n + k] = 0
            self._rows(n, k, s.seq)
            if k == left:
                out_a[n + k - 1] = 1
                rows.append((n + k - 1, s))
            fed.append((s, k))
            n += k
        if n == 0:
            return
        self.batch.n_tokens = n
        rc = LL.llama_decode(self.m.ctx, self.batch)
        if rc == 1 and self.prefixes.evict_idle(
            [s is not None for s in self.slots]
        ):  # no room: cached prefixes of free sequences go first
            return
        if rc == 1:  # no room in the KV cache (a shared pool): the longest sequence gives way
            worst = max((s for s, _ in fed), key=lambda s: s.n_past)
            worst.finish = "context"
            if not worst.out:
                worst.error = (ErrorKind.CONTEXT, "the KV cache is full; try again when other requests end")
            return
        if rc != 0:
            why = f"llama_decode failed with code {rc}: {self.s.log.last_problem()}"
            for s in active:
                s.error = (ErrorKind.RUNTIME, why)
                s.finish = "error"
            return
        now = time.perf_counter()
        for s, k in fed:
            if k == 0:
                s.n_past += 1
                s.next_tok = -1
            else:
                s.n_fed += k
                s.n_past += k
        for i, s in rows:
            if not s.w.cancel.is_set():
                tok = self._sample(s, i)
                if s.w.req.logprobs >= 0 and tok not in self.eog:
                    entry = logprob_entry(
                        logits_row(_LIB, self.m.ctx, i, self.m.n_vocab), tok, s.w.req.logprobs, self._text
                    )
                    s.logprobs.append(entry)
                    s.pending_lp.append(entry)
                self._take(s, tok, now)

    def _text(self, tok: int) -> str:
        piece = self.pieces.get(tok)
        if piece is None:
            piece = self.pieces[tok] = self.m.piece(tok, self.buf)
        return piece.decode("utf-8", "replace")

    def _sample(self, s: Slot, i: int) -> int:
        ctx = self.m.ctx
        if not s.out and s.first is not None:
            tok = LL.llama_sampler_sample(s.first, ctx, i)
            if s.chain is not None:
                LL.llama_sampler_accept(s.chain, tok)
            return int(tok)
        if s.chain is not None:
            return int(LL.llama_sampler_sample(s.chain, ctx, i))
        row = np.ctypeslib.as_array(self.row_t.from_address(_LIB.llama_get_logits_ith(ctx, i)))
        return int(row.argmax())

    def _take(self, s: Slot, tok: int, now: float) -> None:
        """Account one sampled token: end of generation, stop strings, length, streaming."""
        if not s.t_first:
            s.t_prefill = s.t_first = now
            self.emit(P.Started(id=s.w.req.id, n_prompt=len(s.w.prompt), n_reused=s.n_reused))
            self.report(force=True)  # the prompt's cells are in the cache now
        if tok in self.eog:
            s.finish = "eog"
            return
        s.out.append(tok)
        s.pending.append(tok)
        piece = self.pieces.get(tok)
        if piece is None:
            piece = self.pieces[tok] = self.m.piece(tok, self.buf)
        if s.text.add(s.decoder.decode(piece)):
            s.finish = "stop"
        elif len(s.out) >= s.max_tokens:
            s.finish = "length"
        else:
            s.next_tok = tok
        if s.w.req.stream and not s.finish and now - s.last_flush >= _DELTA_INTERVAL_S:
            text = s.text.ready()
            if text or s.pending:
                self.emit(
                    P.Delta(
                        id=s.w.req.id, text=text, tokens=s.pending, n_past=s.n_past, logprobs=s.pending_lp
                    )
                )
                s.pending, s.pending_lp, s.last_flush = [], [], now

    # ------------------------------------------------------------------ ending requests
    def sweep(self) -> None:
        for i, s in enumerate(self.slots):
            if s is None:
                continue
            if s.w.cancel.is_set() and not s.finish:
                s.finish = "cancelled"
            if s.finish:
                self._finish(s)
                self.slots[i] = None
                self.report(force=True)

    def _finish(self, s: Slot) -> None:
        # The slot is free for the next step; its cells stay for a request sharing the prefix.
        self.prefixes.ended(s.seq, (s.w.prompt + s.out)[: s.n_past], s.error is None)
        req = s.w.req
        try:
            if s.error is not None:
                self.emit(error_event(req.id, kind=s.error[0], message=s.error[1]))
                return
            if s.finish != "stop":
                s.text.add(s.decoder.decode(b"", final=True))
            rest = s.text.rest()
            if req.stream and (rest or s.pending):
                self.emit(
                    P.Delta(id=req.id, text=rest, tokens=s.pending, n_past=s.n_past, logprobs=s.pending_lp)
                )
            end = time.perf_counter()
            n_dec = max(0, len(s.out) - 1)
            decode_s = end - s.t_first if s.t_first else 0.0
            self.emit(
                P.Done(
                    id=req.id,
                    text=s.text.text,
                    tokens=s.out,
                    n_prompt=len(s.w.prompt),
                    n_reused=s.n_reused,
                    stop_reason=s.finish,
                    prefill_s=(s.t_prefill or end) - s.w.t0,
                    first_token_s=(s.t_first or end) - s.w.t0,
                    decode_s=decode_s,
                    tokens_per_s=n_dec / decode_s if n_dec and decode_s > 0 else 0.0,
                    logprobs=s.logprobs,
                )
            )
        finally:
            for chain in (s.chain, s.first):
                if chain is not None:
                    LL.llama_sampler_free(chain)
            s.chain = s.first = None
            self.requests.finished(req.id)

    def report(self, force: bool = False) -> None:
        """Per-sequence occupancy for the KV view, at most a few times a second."""
        now = time.perf_counter()
        if force or now - self.last_report >= _SLOTS_INTERVAL_S:
            self.last_report = now
            self.emit(
                P.Slots(
                    n_past=[s.n_past if s else 0 for s in self.slots],
                    requests=[s.w.req.id if s else 0 for s in self.slots],
                    n_ctx_seq=self.n_ctx_seq,
                    n_waiting=len(self.waiting),
                )
            )

    def abandon(self, kind: ErrorKind, message: str) -> None:
        """After an unexpected failure: every request gets its error, the caches are emptied."""
        for i, s in enumerate(self.slots):
            if s is not None:
                s.error = (kind, message)
                self._finish(s)
                self.slots[i] = None
        while self.waiting:
            w = self.waiting.popleft()
            if w.grammar is not None:
                LL.llama_sampler_free(w.grammar)
            self.emit(error_event(w.req.id, kind=kind, message=message))
            self.requests.finished(w.req.id)
        self.m.clear()  # what the sequences hold is unknown now

    def close(self) -> None:
        """Free the batch; the sequences' cells and their token lists stay for the next run."""
        LL.llama_batch_free(self.batch)
        self.report(force=True)

    # ------------------------------------------------------------------ the loop
    def run(self, first: P.GenerateRequest) -> None:
        self.accept(first)
        while True:
            self.poll()
            self.sweep()
            self.admit()
            if not any(self.slots):
                break
            self.step()
            self.report()
        for msg in self.deferred:
            self.requests.push_back(msg)


def run_batch(session: LlamaSession, first: P.GenerateRequest, requests: Requests, emit: Emit) -> None:
    """Serve ``first`` and every generation that arrives while it runs; return when all ended.

    Never raises: a failure ends each of its requests with an error event (the child's main
    loop would otherwise answer only the first one)."""
    loop = BatchLoop(session, requests, emit)
    try:
        loop.run(first)
    except Exception as exc:  # a bug: every request learns it, the child stays alive
        log.exception("batch loop failed")
        loop.abandon(ErrorKind.RUNTIME, f"{type(exc).__name__}: {exc}")
        for msg in loop.deferred:
            requests.push_back(msg)
    finally:
        loop.close()
