"""One request inside the continuous batch (engine.child.batch): its samplers, its text, its state.

Kept apart from the scheduler so these rules can be read, and tested without a model. Stop
strings are matched on the decoded text, because a stop string may span several tokens and a
token may hold more than one stop string's worth of text. Text that could still turn out to be
the start of a stop string is held back, so a streaming client never receives part of a stop
string it asked to stop before; the held text is released as soon as it can no longer match.
The sampler chains are the single-sequence loop's CPU chains (``chain_spec``), one per request.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import protocol as P
from engine.child.errors import RequestError
from engine.child.grammar import gbnf_for, grammar_sampler, prepend
from engine.child.sampler import build_chain, chain_spec, feed_prompt
from engine.child.topk_cut import chain_address, leading_top_k
from engine.core.sampling import SamplingParams
from engine.protocol.errors import ErrorKind


class StopText:
    """The reply text so far, cut before the first stop string, and how much was already sent."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, piece: str) -> bool:
        """Append decoded text; True once a stop string appeared (the text then ends before it)."""
        if self.stopped or not piece:
            return self.stopped
        start = max(0, len(self.text) - self._longest + 1)  # a match may begin in the old tail
        self.text += piece
        if self.stops:
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
        return self.stopped

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def ready(self) -> str:
        """Unsent text that can no longer become part of a stop string; marks it sent."""
        end = len(self.text) if self.stopped else len(self.text) - self._held()
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out

    def rest(self) -> str:
        """Everything not sent yet (the reply has ended: nothing can match any more)."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


def sampler_specs(
    s: SamplingParams, sampling: dict[str, Any], eog: tuple[int, ...], no_empty: bool, device: bool = False
) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
    """(main chain, first-token chain) as data; main None means greedy by argmax.

    The layouts are the single-sequence loop's chains (``chain_spec``; ``device``: its device
    layout), so a greedy reply is the same token for token; OpenAI's frequency/presence
    penalties ride on the same penalties sampler as the repeat penalty, as in llama.cpp.
    """
    freq = float(sampling.get("frequency_penalty", 0.0) or 0.0)
    pres = float(sampling.get("presence_penalty", 0.0) or 0.0)
    main = chain_spec(s, device=device, freq=freq, pres=pres)
    first = (("logit_bias", eog), *main) if no_empty and eog else None
    return (None if main == (("greedy",),) else main), first


@dataclass
class Waiting:
    req: P.GenerateRequest
    prompt: list[int]
    sampling: SamplingParams
    cancel: threading.Event
    t0: float
    #: llama.cpp's grammar sampler for this request (engine.child.grammar), owned until admitted.
    grammar: object | None = None

    @classmethod
    def checked(
        cls,
        req: P.GenerateRequest,
        cancel: threading.Event,
        tokenize: Callable[[str], list[int]],
        vocab: Any,
        n_ctx_seq: int,
        why: str,
    ) -> Waiting:
        """The request tokenised and checked (``why``: a refusal found by the caller); raises
        RequestError with the one sentence a bad request gets."""
        sampling = SamplingParams.from_dict(req.sampling)
        tokens = tokenize(req.prompt)
        if not tokens:
            raise RequestError(ErrorKind.PARAMS, "the prompt is empty")
        if n_ctx_seq - len(tokens) < 2:
            raise RequestError(
                ErrorKind.CONTEXT,
                f"the prompt is {len(tokens)} tokens long but each sequence holds {n_ctx_seq}",
            )
        if why:
            raise RequestError(ErrorKind.PARAMS, why)
        gbnf = gbnf_for(req.grammar, req.json_schema)
        grammar = grammar_sampler(vocab, gbnf) if gbnf else None
        return cls(req, tokens, sampling, cancel, time.perf_counter(), grammar)


@dataclass
class Slot:
    """One request in one sequence. ``next_tok`` is sampled and decoded on the next step."""

    w: Waiting
    seq: int
    max_tokens: int
    chain: object | None
    first: object | None
    text: StopText
    decoder: Any
    n_fed: int = 0
    n_past: int = 0
    next_tok: int = -1
    out: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    t_prefill: float = 0.0
    t_first: float = 0.0
    last_flush: float = 0.0
    finish: str = ""
    error: tuple[ErrorKind, str] | None = None
    n_reused: int = 0  # prompt tokens whose KV this sequence already held (prefix reuse)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    pending_lp: list[dict[str, Any]] = field(default_factory=list)
    n_ctx_seq: int = 0
    #: Drafting (engine.child.batch_spec): most and current draft tokens per round, verify
    #: rounds, and per draft position how often one was drafted / accepted there.
    k_max: int = 0
    k_now: int = 0
    n_verify: int = 0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    #: ``chain`` is the sequence's device chain (engine.child.batch_backend owns it).
    device: bool = False
    #: k when ``chain`` is a CPU chain that starts with top-k (engine.child.topk_cut), else 0.
    cut: int = 0
    #: The device cuts this sequence's rows to candidates (engine.child.device_cut).
    cut_device: bool = False
    #: ``chain``'s address for the native sampler (engine.child.topk_cut), where it takes that
    #: chain (``cut``), else 0: read every step, so made once here (a ctypes cast costs ~1 µs).
    chain_at: int = 0

    @classmethod
    def start(
        cls,
        w: Waiting,
        seq: int,
        reuse: int,
        eog: tuple[int, ...],
        n_vocab: int,
        n_ctx_seq: int,
        device_chain: object | None = None,
    ) -> Slot:
        """``w`` admitted to sequence ``seq``, which already holds ``reuse`` of its prompt tokens:
        its sampler chains built (the grammar's sampler, if any, now owned by the main chain),
        or its sequence's device chain (the first token's end-of-generation rule is then the
        batch loop's)."""
        if device_chain is not None:
            main = first = None
        else:
            main, first = sampler_specs(w.sampling, w.req.sampling, eog, w.req.no_empty and w.grammar is None)
        chain = build_chain(main, n_vocab) if main else device_chain
        feed_prompt(chain, w.sampling, w.prompt)  # before the grammar, which must not see it
        grammar = w.grammar is not None
        if grammar:  # the grammar decides first
            chain, w.grammar, first = prepend(w.grammar, chain), None, None
        first_chain = build_chain(first, n_vocab) if first else None
        feed_prompt(first_chain, w.sampling, w.prompt)
        s = cls(
            w,
            seq,
            max(1, min(w.req.max_tokens, n_ctx_seq - len(w.prompt))),
            chain,
            first_chain,
            StopText(list(getattr(w.req, "stop", []) or [])),
            codecs.getincrementaldecoder("utf-8")("replace"),
        )
        s.n_fed = s.n_past = s.n_reused = reuse
        s.n_ctx_seq = n_ctx_seq
        s.device = device_chain is not None
        s.cut = leading_top_k(main) if chain is not None and chain is not device_chain and not grammar else 0
        s.chain_at = chain_address(chain) if s.cut else 0
        return s

    def delta(self, text: str, now: float) -> P.Delta:
        """The tokens (and their text) not streamed yet; they count as sent from here on."""
        msg = P.Delta(
            id=self.w.req.id, text=text, tokens=self.pending, n_past=self.n_past, logprobs=self.pending_lp
        )
        self.pending, self.pending_lp, self.last_flush = [], [], now
        return msg

    def end_text(self) -> str:
        """Flush the UTF-8 decoder (a reply cut by a stop string already ended); the unsent rest."""
        if self.finish != "stop":
            self.text.add(self.decoder.decode(b"", final=True))
        return self.text.rest()

    def done(self, end: float) -> P.Done:
        """The reply as the parent gets it, with its timings (``end``: now, perf_counter)."""
        n_dec = max(0, len(self.out) - 1)
        decode_s = end - self.t_first if self.t_first else 0.0
        return P.Done(
            id=self.w.req.id,
            text=self.text.text,
            tokens=self.out,
            n_prompt=len(self.w.prompt),
            n_reused=self.n_reused,
            stop_reason=self.finish,
            prefill_s=(self.t_prefill or end) - self.w.t0,
            first_token_s=(self.t_first or end) - self.w.t0,
            decode_s=decode_s,
            tokens_per_s=n_dec / decode_s if n_dec and decode_s > 0 else 0.0,
            logprobs=self.logprobs,
            **self.draft_counts(),
        )

    def draft_counts(self) -> dict[str, Any]:
        """The speculative fields of Done (as the single-sequence loop reports them)."""
        if not self.w.req.draft:
            return {}
        n_drafted, n_accepted = sum(self.drafted_at), sum(self.accepted_at)
        return {
            "draft": self.w.req.draft,
            "n_drafted": n_drafted,
            "n_accepted": n_accepted,
            "n_target_decodes": max(0, len(self.out) - n_accepted),
            "acceptance": n_accepted / n_drafted if n_drafted else 0.0,
            "mean_accepted": n_accepted / self.n_verify if self.n_verify else 0.0,
            "drafted_at": list(self.drafted_at),
            "accepted_at": list(self.accepted_at),
        }
