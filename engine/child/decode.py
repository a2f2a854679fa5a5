"""Generation on a loaded model: prefill and the decode hot loop.

Apart from ``engine.child.session`` (which owns loading) so the hot loop can be read, measured
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
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.errors import RequestError
from engine.child.io import DELTA_INTERVAL_S, Emit
from engine.child.model import Model
from engine.child.sampler import DEFAULT_SAMPLER, Sampling, argmax_of
from engine.child.session import LlamaSession
from engine.core.sampling import SamplingParams
from engine.protocol import Delta, Done, GenerateRequest, Started

__all__ = ["generate", "run_loop"]


def generate(session: LlamaSession, req: GenerateRequest, cancel: threading.Event) -> Done:
    """One plain (not drafted, not batched) reply on sequence 0, reusing the cached prefix."""
    m = session.require()
    sampling = SamplingParams.from_dict(req.sampling)
    tokens = m.prompt_tokens(req.prompt)
    room = m.n_ctx - len(tokens)
    max_tokens = max(1, min(req.max_tokens, room))
    t0 = time.perf_counter()
    samplers = session.samplers
    sp = samplers.choose(m, sampling, DEFAULT_SAMPLER, req.no_empty, tokens)
    try:
        n_reused = m.reuse_prefix(tokens)
        m.prefill(tokens[n_reused:], n_reused, cancel)
        t_prefill = time.perf_counter()
        session.emit(Started(id=req.id, n_prompt=len(tokens), n_reused=n_reused))
        tok = samplers.first_token(m, sp, tokens, req.no_empty, cancel)
        return run_loop(
            session.emit,
            req.id,
            m,
            sp,
            tok,
            len(tokens),
            n_reused,
            max_tokens,
            t0,
            t_prefill,
            cancel,
            stream=req.stream,
        )
    except RequestError:
        m.clear()
        raise
    finally:
        samplers.release(sp)


def run_loop(
    emit: Emit,
    req_id: int,
    m: Model,
    sp: Sampling,
    tok: int,
    n_prompt: int,
    n_reused: int,
    max_tokens: int,
    t0: float,
    t_prefill: float,
    cancel: threading.Event,
    *,
    stream: bool = True,
    stop_at_eog: bool = True,
) -> Done:
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
    argmax = argmax_of(m) if chain is None else None
    eog = frozenset(m.eog_ids) if stop_at_eog else frozenset()
    pieces = m.pieces
    piece_of = m.piece
    buf = ctypes.create_string_buffer(256)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out_tokens: list[int] = []
    text_parts: list[str] = []
    pending_tokens: list[int] = []
    flushed = 0  # text_parts already sent
    cached_append, is_cancelled, clock = m.cached.append, cancel.is_set, time.perf_counter
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
        if stream and now - last_flush >= DELTA_INTERVAL_S:
            emit(Delta(id=req_id, text="".join(text_parts[flushed:]), tokens=pending_tokens, n_past=pos))
            flushed, pending_tokens, last_flush = len(text_parts), [], now
        if rc != 0:
            if rc == 1:
                stop = "context"
                break
            m.check(rc)
        cached_append(tok)
        n_decoded += 1
        pos += 1
        if is_cancelled():
            stop = "cancelled"
            break
        tok = sample_chain(chain, ctx, -1) if argmax is None else argmax()
    text_parts.append(decoder.decode(b"", final=True))
    if stream and (pending_tokens or text_parts[-1]):
        emit(Delta(id=req_id, text="".join(text_parts[flushed:]), tokens=pending_tokens, n_past=pos))
    times = (t0, t_prefill, t_first, clock())
    return reply_done(req_id, "".join(text_parts), out_tokens, n_prompt, n_reused, stop, times, n_decoded)


def reply_done(
    req_id: int,
    text: str,
    tokens: list[int],
    n_prompt: int,
    n_reused: int,
    stop: str,
    times: tuple[float, float, float, float],
    n_decoded: int,
    **extra: Any,
) -> Done:
    """The ``Done`` of a reply (plain or speculative: ``extra`` holds the drafting figures), its
    timings from ``times`` = (start, prefill done, first token, end)."""
    t0, t_prefill, t_first, t_end = times
    decode_s = t_end - t_first
    return Done(
        id=req_id,
        text=text,
        tokens=tokens,
        n_prompt=n_prompt,
        n_reused=n_reused,
        stop_reason=stop,
        prefill_s=t_prefill - t0,
        first_token_s=t_first - t0,
        decode_s=decode_s,
        tokens_per_s=n_decoded / decode_s if n_decoded and decode_s > 0 else 0.0,
        **extra,
    )
