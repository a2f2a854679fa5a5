"""Generation on a loaded model: prefill and the decode hot loop.

Split from ``engine.child.session`` (which owns loading) so the hot loop can be read, measured
and tuned on its own; which sampler a request uses lives in ``engine.child.sampler``. Runs
only in the runtime child, on its main thread.

llama-bench's decode step is ``decode + copy the logits row + synchronise`` and nothing else,
so everything KV Deck adds has to fit in a few per cent of a token time (``engine.child.bench``
measures it). ``llama_decode`` returns while the device works: the token just submitted is
detokenised and streamed in that shadow, and the next sample (which synchronises) comes last;
between a sample and the next decode only the end-of-generation check and two batch fields
are written.
"""
from __future__ import annotations

import codecs
import ctypes
import threading
import time
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.sampler import DEFAULT_SAMPLER, RequestError, Sampling, SamplingMixin
from engine.protocol import Delta, Done, GenerateRequest, Started
from engine.core.sampling import SamplingParams

if TYPE_CHECKING:
    from engine.child.session import _Model

__all__ = ["GenerationMixin", "RequestError"]

_DELTA_INTERVAL_S = 0.02


def prompt_tokens(session: Any, m: Any, prompt: str) -> list[int]:
    """Tokenise a prompt and refuse, in words, one that is empty or leaves no room to reply."""
    tokens = session.tokenize(prompt)
    if not tokens:
        raise RequestError("params", "the prompt is empty")
    if m.n_ctx - len(tokens) < 2:
        raise RequestError("context", f"the conversation is {len(tokens)} tokens long but the context "
                                      f"holds {m.n_ctx}; start a new chat or load with a larger context")
    return tokens


class GenerationMixin(SamplingMixin):
    """Needs ``_require()``, ``_emit``, ``_log``, ``_cached``, ``_m``, ``tokenize`` and ``_piece``."""

    _m: Any
    _cached: list[int]
    _pieces: tuple[Any, dict[int, bytes]] = (None, {})
    _views: tuple[Any, Any] = (None, None)

    # ------------------------------------------------------------------ generation
    def _decode(self, tokens: list[int], pos0: int, cancel: threading.Event) -> None:
        """Prefill ``tokens`` at ``pos0`` in chunks of n_batch; logits only for the last one.

        The batch is filled through numpy views: a field-by-field ctypes fill costs about a
        microsecond per token, which is 1 % of a GPU prefill of 512 tokens.
        """
        m = self._require()
        b = m.batch
        tok_a, pos_a, out_a = self._batch_views(m)
        for start in range(0, len(tokens), m.n_batch):
            if cancel.is_set():
                raise RequestError("cancelled", "cancelled")
            chunk = tokens[start:start + m.n_batch]
            n = len(chunk)
            tok_a[:n] = chunk
            pos_a[:n] = np.arange(pos0 + start, pos0 + start + n, dtype=np.int32)
            out_a[:n] = 0
            out_a[n - 1] = 1 if start + n == len(tokens) else 0
            b.n_tokens = n
            self._check(LL.llama_decode(m.ctx, b))
            self._cached.extend(chunk)

    def _batch_views(self, m: _Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views of the batch's token, pos and logits arrays; every row is set to one
        sequence (0) once per model, since nothing here decodes another sequence."""
        if self._views[0] is not m:
            b, n = m.batch, m.n_batch
            for i in range(n):
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
            self._views = (m, (np.ctypeslib.as_array(b.token, (n,)), np.ctypeslib.as_array(b.pos, (n,)),
                               np.ctypeslib.as_array(b.logits, (n,))))
        return self._views[1]

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
        if getattr(req, "draft", ""):  # speculative decoding lives in engine.child.speculative
            from engine.child.speculative import generate_speculative

            return generate_speculative(self, req, cancel)  # type: ignore[arg-type]
        m = self._require()
        sampling = SamplingParams.from_dict(req.sampling)
        tokens = prompt_tokens(self, m, req.prompt)
        room = m.n_ctx - len(tokens)
        max_tokens = max(1, min(req.max_tokens, room))
        t0 = time.perf_counter()
        sp = self._sampling(m, sampling, DEFAULT_SAMPLER, req.no_empty)
        try:
            n_reused = self._reuse_prefix(tokens)
            self._decode(tokens[n_reused:], n_reused, cancel)
            t_prefill = time.perf_counter()
            self._emit(Started(id=req.id, n_prompt=len(tokens), n_reused=n_reused))
            tok = self._first_token(m, sp, tokens, req.no_empty, cancel)
            return self._loop(req.id, m, sp, tok, len(tokens), n_reused, max_tokens, t0, t_prefill,
                              cancel, stream=req.stream)
        except RequestError:
            self._cached.clear()
            LL.llama_memory_clear(m.mem, True)
            raise
        finally:
            self._release(sp)

    def _loop(self, req_id: int, m: _Model, sp: Sampling, tok: int, n_prompt: int, n_reused: int,
              max_tokens: int, t0: float, t_prefill: float, cancel: threading.Event, *,
              stream: bool = True, stop_at_eog: bool = True) -> Done:
        """The hot loop: decode, then emit the token just submitted while the device works,
        then sample (which synchronises). Between a sample and the next decode only the
        end-of-generation check and two batch fields are written."""
        t_first = time.perf_counter()
        ctx, b, decode = m.ctx, m.batch, LL.llama_decode
        tok_p, pos_p = b.token, b.pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        b.n_tokens = 1
        chain, sample_chain = sp.chain, LL.llama_sampler_sample
        argmax = self._argmax(m) if chain is None else None
        eog = frozenset(m.eog_ids) if stop_at_eog else frozenset()
        pieces = self._piece_cache(m)
        piece_of = self._piece
        buf = ctypes.create_string_buffer(256)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        out_tokens: list[int] = []
        text_parts: list[str] = []
        pending_tokens: list[int] = []
        flushed = 0  # text_parts already sent
        cached_append, is_cancelled, clock = self._cached.append, cancel.is_set, time.perf_counter
        last_flush = clock()
        stop = "length"
        n_decoded = 0
        pos = n_prompt
        while True:
            if tok in eog:
                stop = "eog"
                break
            out_tokens.append(tok)
            if len(out_tokens) >= max_tokens:
                piece = pieces.get(tok)
                text_parts.append(decoder.decode(piece_of(tok, buf) if piece is None else piece))
                pending_tokens.append(tok)
                break
            tok_p[0] = tok
            pos_p[0] = pos
            rc = decode(ctx, b)
            # while the device works: detokenise and stream the token just submitted
            piece = pieces.get(tok)
            if piece is None:
                piece = pieces[tok] = piece_of(tok, buf)
            text_parts.append(decoder.decode(piece))
            pending_tokens.append(tok)
            now = clock()
            if stream and now - last_flush >= _DELTA_INTERVAL_S:
                self._emit(Delta(id=req_id, text="".join(text_parts[flushed:]), tokens=pending_tokens,
                                 n_past=pos))
                flushed, pending_tokens, last_flush = len(text_parts), [], now
            if rc != 0:
                if rc == 1:
                    stop = "context"
                    break
                self._check(rc)
            cached_append(tok)
            n_decoded += 1
            pos += 1
            if is_cancelled():
                stop = "cancelled"
                break
            tok = sample_chain(chain, ctx, -1) if argmax is None else argmax()
        text_parts.append(decoder.decode(b"", final=True))
        if stream and (pending_tokens or text_parts[-1]):
            self._emit(Delta(id=req_id, text="".join(text_parts[flushed:]), tokens=pending_tokens,
                             n_past=pos))
        t_end = clock()
        decode_s = t_end - t_first
        return Done(
            id=req_id, text="".join(text_parts), tokens=out_tokens, n_prompt=n_prompt,
            n_reused=n_reused, stop_reason=stop, prefill_s=t_prefill - t0,
            first_token_s=t_first - t0, decode_s=decode_s,
            tokens_per_s=n_decoded / decode_s if n_decoded and decode_s > 0 else 0.0,
        )

    def _piece_cache(self, m: _Model) -> dict[int, bytes]:
        """Detokenised pieces of this model's tokens, filled as tokens are first generated
        (keyed by the model object: a new model's vocabulary may reuse a freed address)."""
        if self._pieces[0] is not m:
            self._pieces = (m, {})
        return self._pieces[1]
