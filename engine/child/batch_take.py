"""What a sampled token does to its reply in the batch loop (engine.child.batch).

Taking a token decides what the next step needs at once: end of generation, the length, the
token the sequence feeds next. Its text (detokenizing, stop strings, streaming deltas) does not
change the next step's batch, so on a GPU it waits until that step is on the device: llama_decode
returns before the device is done, and the text then costs no device time. Sixteen rows' text
took 0.24 ms a step on a 2-core VM, beside 0.3-0.4 ms of everything the loop does outside
llama_decode and sampling on an H100 host (benchmarks/results/server-2026-12-05-h100-native.json),
time a server loses to llama-batched-bench, which samples nothing. A reply whose text meets a
stop string then already has its next token in the running step: the loop drops that row.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from engine import protocol as P
from engine.child.batch_sample import LIB, TIMES, Switch
from engine.child.grammar import logits_row, logprob_entry
from engine.child.io import DELTA_INTERVAL_S, Emit
from engine.child.model import Model
from engine.child.slots import Slot


class Takes:
    """Takes each step's tokens into their replies; holds the tokens whose text is still due."""

    def __init__(self, m: Model, emit: Emit, report: Callable[[], None]) -> None:
        self.m, self.emit, self.report = m, emit, report
        self.eog = frozenset(m.eog_ids)
        self.pieces: dict[int, bytes] = {}
        self.buf = ctypes.create_string_buffer(256)
        #: Tokens taken whose text is still to be accounted (:meth:`settle`).
        self.later: list[tuple[Slot, int, float]] = []
        #: Whether a step's text waits for the next step's decode, given whether llama_decode
        #: returns before the device is done (``KVDECK_TEXT_DURING_DECODE``).
        self.during_decode = Switch("KVDECK_TEXT_DURING_DECODE")

    def row(self, s: Slot, i: int, tok: int, now: float, later: bool = False) -> None:
        """Take the token sampled from batch row ``i``, its log-probabilities from that row (read
        now: the next decode overwrites the rows); its text now, or with ``later`` at :meth:`settle`."""
        if s.w.req.logprobs >= 0 and tok not in self.eog:
            row = logits_row(LIB, self.m.ctx, i, self.m.n_vocab)
            entry = logprob_entry(row, tok, s.w.req.logprobs, self.text)
            s.logprobs.append(entry)
            s.pending_lp.append(entry)
        if not s.t_first:
            s.t_prefill = s.t_first = now
            self.emit(
                P.Started(id=s.w.req.id, n_prompt=len(s.w.prompt), n_reused=s.n_reused, step=TIMES.steps)
            )
            self.report()  # the prompt's cells are in the cache now
        if tok in self.eog:
            s.finish = "eog"
            return
        s.out.append(tok)
        if len(s.out) >= s.max_tokens:
            s.finish = "length"
        else:
            s.next_tok = tok
        if later:
            self.later.append((s, tok, now))
        else:
            self._text_of(s, tok, now)

    def settle(self) -> None:
        """The text of the tokens taken with ``later`` (a running step may hold the next token
        of a reply that ends here)."""
        later, self.later = self.later, []
        for s, tok, now in later:
            self._text_of(s, tok, now)

    def drop(self) -> None:
        """Forget the tokens whose text is due (their requests end with an error)."""
        self.later = []

    def due(self) -> bool:
        """Whether a reply that is ending still waits for its text."""
        return any(s.finish or s.w.cancel.is_set() for s, _, _ in self.later)

    def text(self, tok: int) -> str:
        return self._piece(tok).decode("utf-8", "replace")

    def _piece(self, tok: int) -> bytes:
        piece = self.pieces.get(tok)
        if piece is None:
            piece = self.pieces[tok] = self.m.piece(tok, self.buf)
        return piece

    def _text_of(self, s: Slot, tok: int, now: float) -> None:
        """A taken token's text: stop strings (after the length: a last token may hold one),
        streaming."""
        s.pending.append(tok)
        if s.text.add(s.decoder.decode(self._piece(tok))):
            s.finish = "stop"
        if s.w.req.stream and not s.finish and now - s.last_flush >= DELTA_INTERVAL_S:
            text = s.text.ready()
            if text or s.pending:
                self.emit(s.delta(text, now))
