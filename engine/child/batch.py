"""Continuous batching: several requests decoded together on one context, one sequence each.

Why: a decode step over a small batch costs little more than one token (the weights are read
once per step either way), so N clients decoding together get far more tokens per second than
N clients taking turns. llama.cpp does the batching; this loop only schedules it.

The context is loaded with n_seq_max = N and slot i is llama.cpp sequence i. Every step builds
ONE llama_batch (engine.child.batch_rows): first one token per generating sequence (they must
not wait behind a long prompt), then prefill chunks of admitted prompts in arrival order, never
more than n_batch tokens in all (more aborts the process), laid out in sequence order. Each
sequence samples its own output row with its own CPU sampler chain (with llama.cpp's grammar
sampler first for constrained requests, engine.child.grammar), seeded per request; a sequence
is free the moment its request ends (end of generation, max_tokens, a stop string, a cancel, a
client that went away), so a waiting request starts on the next step. Its cells stay for a
request sharing the prefix (engine.child.prefix); with a KV stream per sequence the busy
sequences are kept one run of ids, by placement and by moving one into a gap.

On a GPU, llama_decode returns before the device is done: a step's text and events, and a step
of generated tokens whose rows all go on even the next step itself, are sent while the device
runs (BatchLoop.step), so that little but sampling lies between two decodes.

Between steps the request queue is polled without blocking (engine.child.batch_intake), so
new requests and cancels join the running batch. A request the loop cannot run beside the
others (a load, a benchmark, a speculative generation) stops admission: the sequences still
running finish (or are cancelled when the model is going away) and the message goes back to
the child's main loop.

Runs only in the runtime child, on its main thread (nothing in llama.cpp is safe against a
concurrent decode). A one-sequence context only comes here when a request asks (``serve``, a
grammar, log-probabilities); sequence 0's prefix list is the single-sequence loop's
(engine.child.decode), so both loops agree on what the cache holds.
"""

from __future__ import annotations

import logging
import time

import llama_cpp.llama_cpp as LL

from engine import protocol as P
from engine.child.batch_backend import SeqChains, enabled, not_eog
from engine.child.batch_draft_model import model_drafts
from engine.child.batch_intake import Intake
from engine.child.batch_rows import BatchRows, Launch, StepRows, goes_on, returns_at_once
from engine.child.batch_sample import TIMES, RowSampler, Switch, slots_event
from engine.child.batch_spec import BatchDrafting, drafters_of
from engine.child.batch_take import Takes
from engine.child.device_cut import SeqCuts
from engine.child.device_cut import enabled as cuts_enabled
from engine.child.errors import ErrorKind, error_event
from engine.child.io import Emit, Requests, flush_held, held
from engine.child.prefix import SeqPrefixes, gap_moves
from engine.child.session import LlamaSession
from engine.child.slots import Slot, Waiting
from engine.child.step_trace import StepTrace

log = logging.getLogger(__name__)

_SLOTS_INTERVAL_S = 0.25
#: Before a step in which every admitted request is still to be prefilled, more requests are
#: waited for until none came for GATHER_QUIET_S, GATHER_MOST_S at most (Intake.gather): a lone
#: request pays GATHER_QUIET_S of time to first token.
GATHER_QUIET_S, GATHER_MOST_S = 0.002, 0.010


class BatchLoop:
    """Schedules every admitted request of one run; created per run by :func:`run_batch`."""

    def __init__(self, session: LlamaSession, requests: Requests, emit: Emit) -> None:
        m = session.require()
        self.s, self.m, self.requests, self.emit = session, m, requests, emit
        self.n_seq = int(LL.llama_n_seq_max(m.ctx))
        self.n_batch = int(LL.llama_n_batch(m.ctx))
        self.n_ubatch = int(LL.llama_n_ubatch(m.ctx))
        self.decode_returns_early = False  # llama_decode returned before the device was done
        self.n_ctx_seq = int(LL.llama_n_ctx_seq(m.ctx))
        self.slots: list[Slot | None] = [None] * self.n_seq
        self.eog = frozenset(m.eog_ids)
        self.sampler = RowSampler(m.ctx, m.n_vocab)  # every row of a step at once
        # the replies' side of each sampled token (engine.child.batch_take)
        self.takes = Takes(m, emit, lambda: self.report(force=True))
        self.last_report = 0.0
        session.samplers.detach(m)  # a device chain on sequence 0 would replace that row's logits
        # per-slot prefix reuse (engine.child.prefix); a stream per sequence unless unified
        self.streams = streams = self.n_seq > 1 and self.n_ctx_seq < LL.llama_n_ctx(m.ctx)
        self.prefixes = SeqPrefixes(m, self.n_seq, streams, keep=self.n_ubatch)
        self.movable = streams and not (
            LL.llama_model_is_recurrent(m.model) or LL.llama_model_is_hybrid(m.model)
        )
        sds = drafters_of(session)
        # the self-drafters, a separate draft model, and lookup for requests asking
        self.drafting = BatchDrafting(sds, m, model_drafts(session, m))
        # The queued messages: who joins, who waits, who stops the run (engine.child.batch_intake).
        self.intake = Intake(session, m, requests, emit, self.n_ctx_seq, self.drafting)
        self.waiting = self.intake.waiting
        # Device chains per sequence (engine.child.batch_backend); not with drafting (verify
        # rows are several outputs of one sequence per step).
        self.chains = SeqChains(m) if enabled() and not sds else None
        # or the candidate cut per sequence (engine.child.device_cut)
        self.cuts = SeqCuts(m) if cuts_enabled() and not sds and self.chains is None else None
        self.rows = BatchRows(self.n_batch)  # the step's llama_batch (engine.child.batch_rows)
        #: The step already on the device (:meth:`step`), and whether steps may go early.
        self.launched: Launch | None = None
        self.shape: list[tuple[int, int]] | None = None  # the last composed step's tokens per sequence
        self.early = Switch("KVDECK_EARLY_LAUNCH")
        self.trace = StepTrace(m.ctx)  # each step's times, for benchmarks (engine.child.step_trace)

    # ------------------------------------------------------------------ requests
    def admit(self) -> None:
        """Waiting requests into free sequences, placed together (engine.child.prefix)."""
        free = [i for i in range(self.n_seq) if self.slots[i] is None]
        batch: list[Waiting] = []
        while self.waiting and len(batch) < len(free):
            w = self.waiting.popleft()
            if not w.cancel.is_set():
                batch.append(w)
                continue
            if w.grammar is not None:
                LL.llama_sampler_free(w.grammar)
            self.emit(error_event(w.req.id, kind=ErrorKind.CANCELLED, message="cancelled"))
            self.requests.finished(w.req.id)
        if not batch:
            return
        busy = [k for k in range(self.n_seq) if self.slots[k] is not None]
        new: list[Slot] = []
        for w, (i, reuse) in zip(batch, self.prefixes.place(free, busy, [w.prompt for w in batch])):
            self.drafting.placed(i, reuse)
            chain = self.chains.admit(i, w) if self.chains is not None else None
            s = self.slots[i] = Slot.start(
                w, i, reuse, tuple(self.m.eog_ids), self.m.n_vocab, self.n_ctx_seq, chain
            )
            new.append(s)
        if self.cuts is not None:
            self.cuts.placed(self.slots, new)
        self.report(force=True)

    # ------------------------------------------------------------------ one step
    def _launch(self, st: StepRows, gen_only: bool, overlap: bool) -> Launch:
        """Put ``st`` on the device: llama_decode returns before the device is done on a GPU."""
        t0 = time.perf_counter()
        rc = LL.llama_decode(self.m.ctx, self.rows.batch)
        t_call = time.perf_counter()
        self.sampler.decoding(st.n, len(st.rows), t0, self.decode_returns_early)
        return Launch(st, gen_only, overlap, rc, t0, t_call)

    def _follows(self, st: StepRows, rows: list[tuple[int, Slot]], toks: list[int], gen_only: bool) -> bool:
        """Whether the next step goes to the device before this one's tokens are taken
        (:meth:`step`): a step of generated tokens only whose every row goes on
        (engine.child.batch_rows.goes_on), nothing waiting for a free sequence, no drafter
        that takes every decode and no device chain (the candidate cut is fine: its rows are
        read before the launch)."""
        if not (gen_only and self.early(self.decode_returns_early)) or len(rows) != len(st.fed):
            return False
        if (self.waiting and None in self.slots) or self.drafting.sds or self.chains:
            return False
        return goes_on([s for _, s in rows], toks, self.eog)

    def step(self) -> None:
        """One decode and its sampling. The step's batch is composed here, or was put on the
        device by the step before (``launched``): where llama_decode returns before the device
        is done, a step of generated tokens whose rows all go on launches the next one as soon
        as its rows are sampled, and only then takes its tokens (their replies, their text),
        runs the requests' side of the loop and flushes its events, while the device computes.
        Why: that is the 0.2 ms a 16-row step spent between two decodes on an H200 besides
        sampling (benchmarks/results/server-2026-12-05-h200.json), the gap to
        llama-batched-bench, whose next decode never waits for tokens
        (``KVDECK_EARLY_LAUNCH``: ``1`` always, for tests on a CPU; ``0`` never)."""
        go, self.launched = self.launched, None
        if go is None:
            active = [s for s in self.slots if s is not None and not s.finish]
            gen = [s for s in active if s.next_tok >= 0]
            drafts = self.drafting.drafts(gen, self.n_batch - len(gen))
            st = self.rows.compose(active, drafts)
            if st.n == 0:
                self.takes.settle()
                flush_held(self.emit)
                return
            # The last step's text and held events go out while the device runs this step where
            # llama_decode returns at once (seen on the last step; engine.child.batch_rows
            # .returns_at_once), else first: a CPU step, a prefill or a new graph would hold them.
            before, self.shape = self.shape, st.per_seq()
            overlap = self.takes.during_decode(self.decode_returns_early)
            overlap = overlap and returns_at_once(st.n, self.shape, before, self.streams, self.n_ubatch)
            if not overlap:
                self.takes.settle()
                flush_held(self.emit)
            go = self._launch(st, st.n == len(gen) and not st.checks, overlap)
        st, rc, t0 = go.st, go.rc, go.t0
        n, rows, fed, blocks, checks = st.n, st.rows, st.fed, st.blocks, st.checks
        if go.overlap:
            self.takes.settle()
            flush_held(self.emit)
        t_flushed = time.perf_counter()
        LL.llama_synchronize(self.m.ctx)  # the logits are read at once anyway; this times the device
        t1 = time.perf_counter()
        self.decode_returns_early = t1 - t_flushed > go.t_call - t0
        if rc == 0:
            self.sampler.decoded(n, t1 - t0)
        TIMES.steps += 1
        TIMES.decode_s += t1 - t0  # includes the write only where it outlasted the device
        gen_only = rc == 0 and go.gen_only  # generated tokens only, as batched-bench
        if gen_only:
            TIMES.gen_steps += 1
            TIMES.gen_decode_s += t1 - t0
        for attached in (self.chains, self.cuts):
            if attached is not None and rc == 0:
                attached.decoded()
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
            for s in (s for s in self.slots if s is not None and not s.finish):
                s.error = (ErrorKind.RUNTIME, why)
                s.finish = "error"
            return
        self.drafting.decoded(blocks)  # while the target's hidden states are this batch's
        for s, k in fed:
            if k == 0:
                s.n_past += 1
                s.next_tok = -1
            else:
                s.n_fed += k
                s.n_past += k
        # a reply that met a stop string while this step ran (takes.settle) gave its row for nothing
        rows = [(i, s) for i, s in rows if not s.w.cancel.is_set() and not s.finish]
        toks = self.sampler.all(rows, dense=gen_only)
        now = time.perf_counter()
        TIMES.sample_s += now - t1
        if gen_only:
            TIMES.gen_sample_s += now - t1
        follows = self._follows(st, rows, toks, gen_only)
        self.trace.step((t0, go.t_call, t1, now), n, len(rows), gen_only, follows)
        later = self.takes.during_decode(self.decode_returns_early)  # the text while the next step runs
        if follows:
            self.launched = self._launch(self.rows.follow(st, toks), True, True)
            TIMES.followed += 1
            TIMES.relaunch_s += self.launched.t0 - t1
        with held(self.emit):  # the step's Started, Delta and Slots events in one write
            for (i, s), tok in zip(rows, toks):
                if s.device and not s.out and tok in self.eog and s.w.req.no_empty:
                    tok = not_eog(self.m, s.chain, s.w.sampling, i, tok, s.w.prompt)
                self.takes.row(s, i, tok, now, later and not s.w.req.draft)  # verify needs a stop now
            for i, s, d in checks:
                self.drafting.verify(
                    self.sampler, s, i, d, lambda s, row, tok: self.takes.row(s, row, tok, now)
                )

    # ------------------------------------------------------------------ ending requests
    def sweep(self) -> None:
        if self.takes.due():
            self.takes.settle()  # a reply ends with all its text
        for i, s in enumerate(self.slots):
            if s is None:
                continue
            if s.w.cancel.is_set() and not s.finish:
                s.finish = "cancelled"
            if s.finish:
                self._finish(s)
                self.slots[i] = None
                self.report(force=True)
        self._close_gaps()

    def _close_gaps(self) -> None:
        """With a KV stream per sequence, busy sequences that are not one run of ids cost a
        ubatch per run every step (engine.child.prefix): when no waiting request will fill the
        gap, busy sequences move down into free ones (engine.child.prefix.gap_moves: never into
        one whose cached prefix is a conversation's next turn, never unless it leaves fewer
        runs)."""
        if not self.movable or self.waiting or self.chains is not None or not self.drafting.can_move():
            return
        busy = [i for i, s in enumerate(self.slots) if s is not None]
        free = [i for i, s in enumerate(self.slots) if s is None]
        held = {i: len(self.prefixes.kept[i]) for i in free}
        for src, dst in gap_moves(busy, free, held, self.prefixes.keep):
            self.prefixes.move(src, dst)
            self.drafting.moved(src, dst)
            s = self.slots[src]
            assert s is not None
            s.seq, self.slots[dst], self.slots[src] = dst, s, None
            if self.cuts is not None:
                self.cuts.placed(self.slots, [s])
            self.report(force=True)

    def _finish(self, s: Slot) -> None:
        # The slot is free for the next step; its cells stay for a request sharing the prefix.
        self.prefixes.ended(s.seq, (s.w.prompt + s.out)[: s.n_past], s.error is None)
        req = s.w.req
        try:
            if s.error is not None:
                self.emit(error_event(req.id, kind=s.error[0], message=s.error[1]))
                return
            rest = s.end_text()
            end = time.perf_counter()
            if req.stream and (rest or s.pending):
                self.emit(s.delta(rest, end))
            self.emit(s.done(end))
        finally:
            for chain in (s.first,) if s.device else (s.chain, s.first):
                if chain is not None:
                    LL.llama_sampler_free(chain)
            s.chain = s.first = None
            self.requests.finished(req.id)

    def report(self, force: bool = False) -> None:
        """Per-sequence occupancy for the KV view, at most a few times a second."""
        now = time.perf_counter()
        if force or now - self.last_report >= _SLOTS_INTERVAL_S:
            self.last_report = now
            self.emit(slots_event(self.slots, self.n_ctx_seq, len(self.waiting)))

    def abandon(self, kind: ErrorKind, message: str) -> None:
        """After an unexpected failure: every request gets its error, the caches are emptied."""
        self.landed()
        self.takes.drop()
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

    def landed(self) -> None:
        """Wait for a step still on the device (after a failure: its rows are never taken)."""
        if self.launched is not None:
            LL.llama_synchronize(self.m.ctx)
            self.launched = None

    def close(self) -> None:
        """Free the batch; the sequences' cells and their token lists stay for the next run; the
        messages that stopped admission go back to the child's main loop."""
        for msg in self.intake.deferred:
            self.requests.push_back(msg)
        self.landed()
        self.rows.free()
        self.sampler.close()
        for attached in (self.chains, self.cuts):
            if attached is not None:
                attached.close()
        self.trace.write()
        self.report(force=True)

    # ------------------------------------------------------------------ the loop
    def run(self, first: P.GenerateRequest) -> None:
        t0 = time.perf_counter()
        try:
            self._run(first)
        finally:
            TIMES.busy_s += time.perf_counter() - t0

    def _run(self, first: P.GenerateRequest) -> None:
        """Every event of the loop is held and written once a step's decode is under way
        (``step``), so the pipe write and the parent's wake-up cost no device time."""
        self.intake.accept(first)
        with held(self.emit):
            while True:
                self.intake.poll(s.w for s in self.slots if s)
                if self.launched is None:  # no sequence changes hands while its row is on the device
                    self.sweep()
                    self.admit()
                    if not any(self.slots):
                        break
                    if (
                        None in self.slots
                        and not self.waiting
                        and all(s.n_fed == s.n_reused for s in self.slots if s)
                    ):
                        flush_held(self.emit)  # what ended meanwhile is not held through the wait
                        self.intake.gather([s.w for s in self.slots if s], GATHER_QUIET_S, GATHER_MOST_S)
                        self.sweep()  # a stop that came meanwhile cancels before any prefill
                        self.admit()
                self.step()
                self.report()


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
    finally:
        loop.close()
