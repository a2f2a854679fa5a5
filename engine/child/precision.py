"""The KV precision check, inside the runtime child: what a cache type costs in quality.

For each prompt the loaded model runs twice on contexts this module creates itself: once with a
reference cache (f32 K/V, nothing rounded) and once with the candidate K/V types. The reference
runs without flash attention: with it, llama.cpp casts f32 K/V to f16 before attention
(``build_attn_mha`` in llama-graph.cpp), which would make f16 look free. The candidate runs as
asked (flash attention on by default, as llama.cpp resolves "auto" and as quantized V caches
need), so its score is what the user's configuration loses against the unrounded model; both
contexts share every other setting, and f32 against f32 without flash attention is bit-identical.

1. Reference greedy continuation of N tokens (llama.cpp developers compare 30 tokens).
2. Teacher forcing: prompt + reference continuation in one batch, logits at every continuation
   position, on both contexts; per position KL(ref || cand) and top-1 agreement. The reference
   distributions come from the same batch shape as the candidate's, so nothing but the cache
   and its attention kernel differs (one-token decodes are not bit-identical to batched ones).
3. Candidate greedy continuation up to the first token that differs from the reference.

Reference continuations depend only on the model and prompt, so they are kept for the loaded
model: checking several candidates generates them once. Runs only in the child, on its main thread.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError
from engine.child.io import Emit
from engine.child.model import FLASH, Model, flash_type, ggml_type_id
from engine.child.session import LlamaSession
from engine.core.precision_metrics import PromptScore, score_prompt, summarize
from engine.protocol import PrecisionProgress, PrecisionRequest, PrecisionResult

MAX_TOKENS = 512
_FULL_PRECISION = ("f32", "f16", "bf16")


class _ReferenceCache:
    """Reference continuations of the currently loaded model, keyed by everything that shapes them."""

    def __init__(self) -> None:
        self._owner: object | None = None
        self._entries: dict[tuple[object, ...], list[int]] = {}

    def get(self, m: Model, key: tuple[object, ...]) -> list[int] | None:
        if self._owner is not m:  # another model (or a reload): nothing carries over
            self._owner, self._entries = m, {}
        return self._entries.get(key)

    def put(self, m: Model, key: tuple[object, ...], tokens: list[int]) -> None:
        if self._owner is m and len(self._entries) < 256:
            self._entries[key] = list(tokens)


_REFERENCES = _ReferenceCache()


class _Context:
    """One llama_context on the loaded model, with a batch big enough for a whole sequence."""

    def __init__(
        self,
        m: Model,
        type_k: str,
        type_v: str,
        n_ctx: int,
        flash_attn: str,
        n_threads: int,
        n_outputs: int,
        last_problem: Callable[[], str],
    ) -> None:
        cp = LL.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx  # the teacher-forced sequence goes in as one batch
        cp.n_ubatch = min(512, n_ctx)
        # Only the continuation needs logits: reserving n_ubatch rows of n_vocab floats instead
        # would cost ~270 MB of compute buffer per context for a 262k vocabulary.
        cp.n_outputs_max = n_outputs
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.flash_attn_type = flash_type(flash_attn)
        cp.type_k = ggml_type_id(type_k)
        cp.type_v = ggml_type_id(type_v)
        cp.swa_full = False  # as the app loads models (and as the memory plan assumes)
        self.ctx = LL.llama_init_from_model(m.model, cp)
        if not self.ctx:
            why = last_problem() or "llama.cpp refused the settings"
            raise RequestError(
                ErrorKind.PARAMS,
                f"could not create a {type_k}/{type_v} context of {n_ctx} tokens for the check: {why}",
            )
        self.n_ctx = int(LL.llama_n_ctx(self.ctx))
        self.batch = LL.llama_batch_init(self.n_ctx, 0, 1)
        self.n_vocab = m.n_vocab

    def free(self) -> None:
        if self.ctx:
            LL.llama_batch_free(self.batch)
            LL.llama_free(self.ctx)
            self.ctx = None

    def decode(self, tokens: list[int], pos0: int, n_out: int) -> None:
        """Decode tokens at pos0.. with logits for the last ``n_out`` of them."""
        b = self.batch
        n = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if i >= n - n_out else 0
        b.n_tokens = n
        rc = LL.llama_decode(self.ctx, b)
        if rc != 0:
            raise RequestError(ErrorKind.RUNTIME, f"llama_decode failed with code {rc} during the check")

    def row(self, i: int) -> np.ndarray:
        """A view of the logits of batch index ``i`` (-1: the last); valid until the next decode."""
        ptr = LL.llama_get_logits_ith(self.ctx, i)
        if not ptr:
            raise RequestError(ErrorKind.RUNTIME, "llama.cpp returned no logits")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def clear(self) -> None:
        LL.llama_memory_clear(LL.llama_get_memory(self.ctx), True)

    def teacher_forced(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Logits (float32, one row per continuation token) predicting each continuation token."""
        self.clear()
        seq = prompt + continuation[:-1]
        n_out = len(continuation)
        self.decode(seq, 0, n_out)
        first = len(seq) - n_out
        return np.stack([self.row(first + j).copy() for j in range(n_out)])

    def greedy(
        self,
        prompt: list[int],
        n: int,
        eog: np.ndarray,
        cancel: threading.Event,
        follow: list[int] | None = None,
    ) -> list[int]:
        """Greedy continuation of up to n tokens, ending after an end-of-generation token.

        With ``follow`` it stops at the first token that differs from it: only the position of
        the first divergence matters, and stopping there saves the rest of the decodes.
        """
        self.clear()
        self.decode(prompt, 0, 1)
        out: list[int] = []
        pos = len(prompt)
        while True:
            tok = int(np.argmax(self.row(-1)))
            out.append(tok)
            if (
                len(out) >= n
                or eog[tok]
                or (follow is not None and (len(out) > len(follow) or follow[len(out) - 1] != tok))
            ):
                return out
            if cancel.is_set():
                raise RequestError(ErrorKind.CANCELLED, "cancelled")
            self.decode([tok], pos, 1)
            pos += 1


def _check_request(req: PrecisionRequest) -> None:
    for t in (req.type_k, req.type_v, req.reference_type_k, req.reference_type_v):
        ggml_type_id(t)  # a clear RequestError for an unknown type
    if req.flash_attn not in FLASH:
        raise RequestError(
            ErrorKind.PARAMS, f"flash attention must be auto, on or off, not {req.flash_attn!r}"
        )
    if req.reference_flash_attn not in FLASH:
        raise RequestError(
            ErrorKind.PARAMS, f"flash attention must be auto, on or off, not {req.reference_flash_attn!r}"
        )
    for v, fa in ((req.type_v, req.flash_attn), (req.reference_type_v, req.reference_flash_attn)):
        if fa == "off" and v not in _FULL_PRECISION:
            raise RequestError(
                ErrorKind.PARAMS, f"a quantized V cache ({v}) only works with flash attention on"
            )
    if not req.prompts:
        raise RequestError(ErrorKind.PARAMS, "there are no prompts to check")
    if not 1 <= req.n_tokens <= MAX_TOKENS:
        raise RequestError(
            ErrorKind.PARAMS, f"the number of tokens must be between 1 and {MAX_TOKENS}, not {req.n_tokens}"
        )


def _text(m: Model, tokens: list[int]) -> str:
    buf = ctypes.create_string_buffer(256)
    return b"".join(m.piece(t, buf) for t in tokens).decode("utf-8", "replace")


def run_precision(
    session: LlamaSession, req: PrecisionRequest, emit: Emit, cancel: threading.Event
) -> PrecisionResult:
    """Compare the candidate cache with the reference on every prompt; see the module docstring."""
    m = session.require()
    _check_request(req)
    t0 = time.perf_counter()
    prompts = [session.tokenize(p) for p in req.prompts]
    for i, toks in enumerate(prompts, 1):
        if not toks:
            raise RequestError(ErrorKind.PARAMS, f"prompt {i} is empty")
    needed = max(len(t) for t in prompts) + req.n_tokens + 1
    n_ctx = max(req.n_ctx, -(-needed // 256) * 256)
    n_threads = int(LL.llama_n_threads(m.ctx))
    ref_key = (req.reference_type_k, req.reference_type_v, req.reference_flash_attn, n_ctx, req.n_tokens)
    cached = [_REFERENCES.get(m, (*ref_key, tuple(t))) for t in prompts]
    total = sum(3 + (c is None) for c in cached)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        emit(PrecisionProgress(id=req.id, done=done, total=total))
        if cancel.is_set():
            raise RequestError(ErrorKind.CANCELLED, "cancelled")

    contexts: list[_Context] = []
    try:
        ref = _Context(
            m,
            req.reference_type_k,
            req.reference_type_v,
            n_ctx,
            req.reference_flash_attn,
            n_threads,
            req.n_tokens,
            session.log.last_problem,
        )
        contexts.append(ref)
        n_ctx_used = ref.n_ctx
        cand = _Context(
            m,
            req.type_k,
            req.type_v,
            n_ctx,
            req.flash_attn,
            n_threads,
            req.n_tokens,
            session.log.last_problem,
        )
        contexts.append(cand)
        emit(PrecisionProgress(id=req.id, done=0, total=total))
        scores: list[PromptScore] = []
        for toks, continuation in zip(prompts, cached):
            if continuation is None:
                continuation = ref.greedy(toks, req.n_tokens, m.eog, cancel)
                _REFERENCES.put(m, (*ref_key, tuple(toks)), continuation)
                step()
            ref_logits = ref.teacher_forced(toks, continuation)
            step()
            cand_logits = cand.teacher_forced(toks, continuation)
            step()
            follow = cand.greedy(toks, len(continuation), m.eog, cancel, follow=continuation)
            scores.append(
                score_prompt(
                    ref_logits,
                    cand_logits,
                    continuation,
                    follow,
                    len(toks),
                    _text(m, continuation),
                    _text(m, follow),
                )
            )
            del ref_logits, cand_logits
            step()
    finally:
        for c in contexts:
            c.free()
    s = summarize(scores)
    return PrecisionResult(
        id=req.id,
        type_k=req.type_k,
        type_v=req.type_v,
        reference_type_k=req.reference_type_k,
        reference_type_v=req.reference_type_v,
        flash_attn=req.flash_attn,
        n_ctx=n_ctx_used,
        n_tokens=req.n_tokens,
        mean_kl=s.mean_kl,
        max_kl=s.max_kl,
        top1_agreement=s.top1_agreement,
        first_divergence=s.first_divergence,
        n_positions=s.n_positions,
        prompts=[sc.to_dict() for sc in scores],
        elapsed_s=time.perf_counter() - t0,
        reference_cached=all(c is not None for c in cached),
        reference_flash_attn=req.reference_flash_attn,
    )
