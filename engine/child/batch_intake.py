"""The batch loop's side of the request queue: who joins the running batch, who waits, who stops it.

Why a module of its own: the batch loop (engine.child.batch) schedules decode steps; deciding
what each queued message means for the run is a separate question with its own rules. A
generation the batch can serve is tokenised and checked at once (a bad one is refused without
waiting for a free sequence) and queued; a quick request (engine.child.quick) is answered
between steps; anything else stops admission and goes back to the child's main loop after the
run, and a message that replaces or drops the model cancels every request still running.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Iterable

from engine import protocol as P
from engine.child.batch_spec import BatchDrafting, refusal
from engine.child.errors import RequestError, error_event
from engine.child.io import Emit, Requests
from engine.child.model import Model
from engine.child.quick import QUICK, quick_answer
from engine.child.session import LlamaSession
from engine.child.slots import Waiting
from engine.core.errors import KvDeckError

#: Messages that replace or drop the model: the running sequences are cancelled, not finished.
_ENDS_MODEL = (P.LoadRequest, P.UnloadRequest, P.ShutdownRequest, P.LoadDraftRequest, P.UnloadDraftRequest)


def batch_wanted(session: LlamaSession, req: P.GenerateRequest) -> bool:
    """Whether this generation belongs to the batch loop rather than the single-sequence one.

    Drafting: the server's requests always come here (batch_spec drafts per sequence, or refuses
    in one line), and so do the window's when its context has several sequences: its replies
    then go to whichever sequence holds their prefix, as its plain replies do, and never
    overwrite sequence 0 that another reply may hold. On a one-sequence context the window
    drafts in the single-sequence loop (engine.child.speculative)."""
    m = session.model
    if m is None:
        return False
    if req.draft and not req.serve:
        return m.n_seq_max > 1
    # Grammars and log-probabilities are implemented here only, so such requests come here too.
    return req.serve or m.n_seq_max > 1 or bool(req.grammar or req.json_schema) or req.logprobs >= 0


class Intake:
    """The requests of one batch run that are not decoding yet, and the messages kept for later."""

    def __init__(
        self,
        session: LlamaSession,
        m: Model,
        requests: Requests,
        emit: Emit,
        n_ctx_seq: int,
        drafting: BatchDrafting,
    ) -> None:
        self.s, self.m, self.requests, self.emit = session, m, requests, emit
        self.n_ctx_seq, self.drafting = n_ctx_seq, drafting
        self.waiting: collections.deque[Waiting] = collections.deque()
        self.stopping = False
        self.deferred: list[P.Message | None] = []

    def accept(self, req: P.GenerateRequest) -> None:
        """Tokenise and check a request at once, so a bad one is refused without waiting."""
        cancel = self.requests.cancel_event(req.id)
        why = refusal(self.drafting, self.m, req)
        try:
            w = Waiting.checked(req, cancel, self.s.tokenize, self.m.vocab, self.n_ctx_seq, why)
        except (RequestError, KvDeckError) as exc:
            self.emit(error_event(req.id, exc))
            self.requests.finished(req.id)
            return
        self.waiting.append(w)

    def poll(self, running: Iterable[Waiting]) -> None:
        """Take every queued message without blocking; generations join, others stop admission
        (``running``: the admitted requests, cancelled when the message ends the model)."""
        while not self.stopping:
            try:
                msg = self.requests.queue.get_nowait()
            except queue.Empty:
                return
            self._take(msg, running)

    def gather(self, running: list[Waiting], quiet_s: float, most_s: float) -> None:
        """Wait for more generations before a first prefill: until none came for ``quiet_s``,
        ``most_s`` at most. Why: clients that send at once (an agent's fan-out, a benchmark's
        burst) reach the child a fraction of a millisecond apart; the first alone would take a
        whole prefill step, and the others would wait for it (on a GPU, four 127-token prompts
        prefill together in about the time of one)."""
        end = time.perf_counter() + most_s
        while not self.stopping:
            wait = min(quiet_s, end - time.perf_counter())
            if wait <= 0:
                return
            try:
                msg = self.requests.queue.get(timeout=wait)
            except queue.Empty:
                return
            self._take(msg, running)

    def _take(self, msg: P.Message | None, running: Iterable[Waiting]) -> None:
        if isinstance(msg, P.GenerateRequest) and batch_wanted(self.s, msg):
            self.accept(msg)
        elif isinstance(msg, QUICK):
            self._answer(msg)
        else:
            self.stopping = True
            self.deferred.append(msg)
            if msg is None or isinstance(msg, _ENDS_MODEL):
                for w in [*self.waiting, *running]:
                    w.cancel.set()

    def _answer(self, msg: P.Message) -> None:
        try:
            self.emit(quick_answer(self.s, msg))
        except RequestError as exc:
            self.emit(error_event(getattr(msg, "id", 0), exc))
