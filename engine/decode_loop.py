"""Generation on a loaded model: prefill, the decode hot loop, and the native sampler chain.

Split from ``engine.llama_session`` (which owns loading) so the hot loop can be read, measured
and tuned on its own. Runs only in the runtime child, on its main thread.
"""
from __future__ import annotations

import codecs
import ctypes
import threading
import time
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as LL

from engine.protocol import Delta, Done, GenerateRequest, Started
from engine.sampling import SamplingParams

if TYPE_CHECKING:
    from engine.llama_session import _Model

_DELTA_INTERVAL_S = 0.02


class RequestError(Exception):
    """A request failed in a way the child survives; ``kind`` tells the parent whose fault."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind



class GenerationMixin:
    """Needs ``_require()``, ``_emit``, ``_log``, ``_cached``, ``_m`` and ``tokenize`` from the session."""

    _m: Any
    _cached: list[int]

    # ------------------------------------------------------------------ sampling
    def _chain(self, s: SamplingParams, forbid: list[int]) -> object:
        """llama.cpp's native sampler chain; ``forbid`` tokens get -inf (used for the first token).

        Penalties come after top-k: on the full vocabulary they cost one hash lookup per token
        per step (the native docs say so too), on 40 candidates nothing.
        """
        chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
        add = lambda smpl: LL.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if forbid:
            biases = (LL.llama_logit_bias * len(forbid))(
                *[LL.llama_logit_bias(t, float("-inf")) for t in forbid])
            add(LL.llama_sampler_init_logit_bias(self._m.n_vocab, len(forbid), biases))
        if s.greedy:
            if s.repeat_penalty != 1.0:
                add(LL.llama_sampler_init_top_k(64))
                add(LL.llama_sampler_init_penalties(self._m.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
            add(LL.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(LL.llama_sampler_init_top_k(s.top_k))
        if s.repeat_penalty != 1.0:
            add(LL.llama_sampler_init_penalties(self._m.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
        if s.top_p < 1.0:
            add(LL.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(LL.llama_sampler_init_min_p(s.min_p, 1))
        add(LL.llama_sampler_init_temp(s.temperature))
        add(LL.llama_sampler_init_dist(s.seed))
        return chain

    # ------------------------------------------------------------------ generation
    def _decode(self, tokens: list[int], pos0: int, cancel: threading.Event) -> None:
        """Prefill ``tokens`` at ``pos0`` in chunks of n_batch; logits only for the last one."""
        m = self._require()
        b = m.batch
        for start in range(0, len(tokens), m.n_batch):
            if cancel.is_set():
                raise RequestError("cancelled", "cancelled")
            chunk = tokens[start:start + m.n_batch]
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos0 + start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 0
            b.logits[len(chunk) - 1] = 1 if start + len(chunk) == len(tokens) else 0
            b.n_tokens = len(chunk)
            self._check(LL.llama_decode(m.ctx, b))
            self._cached.extend(chunk)

    def _check(self, rc: int) -> None:
        if rc == 0:
            return
        if rc == 1:
            raise RequestError("context", "the context is full (no free KV cache slot)")
        if rc == 2:
            raise RequestError("cancelled", "cancelled")
        raise RequestError("runtime", f"llama_decode failed with code {rc}: {self._log.last_problem()}")

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the KV cache of the longest common prefix with the last request (multi-turn chat)."""
        m = self._require()
        n = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1)  # at least one token must be decoded to get logits
        if n < len(self._cached):
            if not LL.llama_memory_seq_rm(m.mem, 0, n, -1):
                LL.llama_memory_clear(m.mem, True)  # recurrent state cannot roll back partially
                n = 0
            del self._cached[n:]
        return n

    def generate(self, req: GenerateRequest, cancel: threading.Event) -> Done:
        m = self._require()
        sampling = SamplingParams.from_dict(req.sampling)
        tokens = self.tokenize(req.prompt)
        if not tokens:
            raise RequestError("params", "the prompt is empty")
        room = m.n_ctx - len(tokens)
        if room < 2:
            raise RequestError("context", f"the conversation is {len(tokens)} tokens long but the context "
                                          f"holds {m.n_ctx}; start a new chat or load with a larger context")
        max_tokens = max(1, min(req.max_tokens, room))
        t0 = time.perf_counter()
        n_reused = self._reuse_prefix(tokens)
        try:
            self._decode(tokens[n_reused:], n_reused, cancel)
        except RequestError:
            self._cached.clear()
            LL.llama_memory_clear(m.mem, True)
            raise
        t_prefill = time.perf_counter()
        self._emit(Started(id=req.id, n_prompt=len(tokens), n_reused=n_reused))
        forbid = m.eog_ids if req.no_empty else []
        first_chain = self._chain(sampling, forbid) if forbid else None
        chain = self._chain(sampling, [])
        try:
            return self._loop(req, m, chain, first_chain, len(tokens), n_reused, max_tokens,
                              t0, t_prefill, cancel)
        except RequestError:
            self._cached.clear()
            LL.llama_memory_clear(m.mem, True)
            raise
        finally:
            LL.llama_sampler_free(chain)
            if first_chain:
                LL.llama_sampler_free(first_chain)

    def _loop(self, req: GenerateRequest, m: _Model, chain: object, first_chain: object | None,
              n_prompt: int, n_reused: int, max_tokens: int, t0: float, t_prefill: float,
              cancel: threading.Event) -> Done:
        """The hot loop: decode, then emit the previous token while the backend works, then sample."""
        ctx, b, eog = m.ctx, m.batch, m.eog
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buf = ctypes.create_string_buffer(256)
        out_tokens: list[int] = []
        text_parts: list[str] = []
        pending_text: list[str] = []
        pending_tokens: list[int] = []
        last_flush = time.perf_counter()
        stop = "length"
        n_decoded = 0

        tok = LL.llama_sampler_sample(first_chain or chain, ctx, -1)
        if first_chain:
            LL.llama_sampler_accept(chain, tok)
        t_first = time.perf_counter()
        pos = n_prompt
        while True:
            if eog[tok]:
                stop = "eog"
                break
            out_tokens.append(tok)
            if len(out_tokens) >= max_tokens:
                piece = decoder.decode(self._piece(tok, buf))
                text_parts.append(piece)
                pending_text.append(piece)
                pending_tokens.append(tok)
                break
            b.token[0] = tok
            b.pos[0] = pos
            b.n_seq_id[0] = 1
            b.seq_id[0][0] = 0
            b.logits[0] = 1
            b.n_tokens = 1
            rc = LL.llama_decode(ctx, b)
            # while the backend works: detokenise and stream the token just submitted
            piece = decoder.decode(self._piece(tok, buf))
            text_parts.append(piece)
            pending_text.append(piece)
            pending_tokens.append(tok)
            now = time.perf_counter()
            if req.stream and now - last_flush >= _DELTA_INTERVAL_S:
                self._emit(Delta(id=req.id, text="".join(pending_text), tokens=pending_tokens,
                                 n_past=pos))
                pending_text, pending_tokens, last_flush = [], [], now
            if rc != 0:
                if rc == 1:
                    stop = "context"
                    break
                self._check(rc)
            self._cached.append(tok)
            n_decoded += 1
            pos += 1
            if cancel.is_set():
                stop = "cancelled"
                break
            tok = LL.llama_sampler_sample(chain, ctx, -1)
        tail = decoder.decode(b"", final=True)
        text_parts.append(tail)
        pending_text.append(tail)
        if req.stream and (pending_tokens or tail):
            self._emit(Delta(id=req.id, text="".join(pending_text), tokens=pending_tokens,
                                 n_past=pos))
        t_end = time.perf_counter()
        decode_s = t_end - t_first
        return Done(
            id=req.id, text="".join(text_parts), tokens=out_tokens, n_prompt=n_prompt,
            n_reused=n_reused, stop_reason=stop, prefill_s=t_prefill - t0,
            first_token_s=t_first - t0, decode_s=decode_s,
            tokens_per_s=n_decoded / decode_s if n_decoded and decode_s > 0 else 0.0,
        )

