"""The draft model of speculative decoding: loaded beside the target, with the target's context.

Child side. The draft's context is built from the target's *live* context (llama_n_ctx,
n_batch, n_ubatch, n_seq_max, threads), never from the draft's own training default: llama.cpp
b9550 crashed when a draft got a larger context than the fitted target. The pair is checked with
llama.cpp's own compatibility rules (``engine.plan.pairing``) before anything is loaded, and targets
or drafts whose state cannot be rolled back (recurrent, hybrid) are refused with the reason.
When the target is reloaded, the draft keeps its weights and gets a new context on next use.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model, flash_type, ggml_type_id, params_like
from engine.child.session import LlamaSession
from engine.child.vocab import pair_checks
from engine.protocol import DraftLoaded, LoadDraftRequest


@dataclass
class Draft:
    """The draft model and the context it got for the current target."""

    model: Any
    path: str
    vocab: Any
    n_vocab: int
    type_k: str
    type_v: str
    flash_attn: str
    target_path: str
    ctx: Any = None
    mem: Any = None
    batch: Any = None
    n_ctx: int = 0
    target: Model | None = None  # the target Model its context was sized for
    cached: list[int] = field(default_factory=list)  # tokens in the draft's sequence 0
    #: Tokens in its sequences 1.. (the batch loop drafts per sequence: engine.child.batch_draft_model)
    seq_cached: dict[int, list[int]] = field(default_factory=dict)

    def free_context(self) -> None:
        if self.batch is not None:
            LL.llama_batch_free(self.batch)
        if self.ctx is not None:
            LL.llama_free(self.ctx)
        self.ctx = self.mem = self.batch = self.target = None
        self.cached, self.seq_cached = [], {}


def refuse_rollback_less(model: Any, role: str, ctx: Any = None, draft_max: int = 1) -> None:
    """Refuse a model whose state cannot be cut back past a rejected draft token. A hybrid target
    created with recurrent-state snapshots (n_rs_seq >= 2, e.g. Qwen3.5 with its MTP head) can."""
    if ctx is not None and int(LL.llama_n_rs_seq(ctx)) >= 2:
        return
    if LL.llama_model_is_recurrent(model) or LL.llama_model_is_hybrid(model):
        kind = "hybrid (attention + recurrent)" if LL.llama_model_is_hybrid(model) else "recurrent"
        raise RequestError(
            ErrorKind.PARAMS,
            f"speculative decoding is not available: the {role} model is {kind}, "
            "its state cannot be rolled back past rejected draft tokens"
            + (" (load it with n_rs_seq of at least 2)" if role == "target" else ""),
        )


def _check_pair(target_path: str, draft_path: str) -> list[dict[str, Any]]:
    checks = pair_checks(target_path, draft_path)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise RequestError(
            ErrorKind.PARAMS,
            f"{os.path.basename(draft_path)} cannot draft for "
            f"{os.path.basename(target_path)}: " + "; ".join(f"{c.name}: {c.detail}" for c in bad),
        )
    return [vars(c) for c in checks]


def _create_context(session: LlamaSession, d: Draft, m: Model) -> None:
    """The draft's context is built from the target's live context, not from any default."""
    tp = session.load_params.settings if session.load_params else None
    cp = params_like(m.ctx)
    flash = d.flash_attn or (tp.flash_attn if tp else "auto")
    cp.flash_attn_type = flash_type(flash)
    cp.type_k, cp.type_v = ggml_type_id(d.type_k), ggml_type_id(d.type_v)
    cp.swa_full = tp.swa_full if tp else False
    cp.kv_unified = tp.kv_unified if tp else False
    cp.offload_kqv = tp.offload_kqv if tp else True
    session.log.recent_errors = []  # the sentence must be about this context, not an older one
    ctx = LL.llama_init_from_model(d.model, cp)
    if not ctx:
        why = session.log.failure_reason("unknown reason")
        raise RequestError(
            ErrorKind.PARAMS,
            f"could not create the draft's context of {cp.n_ctx} tokens (the target's): {why}",
        )
    d.ctx, d.mem, d.target, d.cached, d.seq_cached = ctx, LL.llama_get_memory(ctx), m, [], {}
    d.batch = LL.llama_batch_init(cp.n_batch, 0, 1)
    d.n_ctx = int(LL.llama_n_ctx(ctx))
    d.target_path = m.path


def load_draft(session: LlamaSession, req: LoadDraftRequest, cancel: threading.Event) -> DraftLoaded:
    """Check the pair with llama.cpp's rules, then load the draft with the target's context."""
    if session.model is None:
        raise RequestError(
            ErrorKind.STATE, "load the target model first: the draft gets the target's context"
        )
    m = session.model
    if not os.path.isfile(req.path):
        raise RequestError(ErrorKind.MODEL, f"draft model file not found: {req.path}")
    refuse_rollback_less(m.model, "target", m.ctx)
    checks = _check_pair(m.path, req.path)
    unload_draft(session)
    t0 = time.perf_counter()
    offload = bool(LL.llama_supports_gpu_offload())
    tp = session.load_params.settings if session.load_params else None
    mp, keep = session.model_params(
        req.id,
        req.path,
        req.n_gpu_layers,
        offload,
        cancel,
        main_gpu=tp.main_gpu if tp else 0,
        load_mode=tp.load_mode if tp else "mmap",  # the target's, as the draft's plan assumes
    )
    session.log.start_capture()
    try:
        model = session.load_model_file(req.path, mp, cancel, "the draft")
        vocab = LL.llama_model_get_vocab(model)
        d = Draft(
            model=model,
            path=req.path,
            vocab=vocab,
            n_vocab=int(LL.llama_vocab_n_tokens(vocab)),
            type_k=req.type_k,
            type_v=req.type_v,
            flash_attn=req.flash_attn,
            target_path=m.path,
        )
        try:
            refuse_rollback_less(model, "draft")
            _create_context(session, d, m)
        except BaseException:
            d.free_context()
            LL.llama_model_free(model)
            raise
    finally:
        lines = session.log.stop_capture()
        del keep
    session.draft = d
    return draft_loaded(req, model, d.n_ctx, d.n_vocab, req.type_k, req.type_v, offload, t0, lines, checks)


def draft_loaded(
    req: LoadDraftRequest,
    model: Any,
    n_ctx: int,
    n_vocab: int,
    type_k: str,
    type_v: str,
    offload: bool,
    t0: float,
    lines: list[str],
    checks: list[Any],
    **extra: Any,
) -> DraftLoaded:
    """The answer to a draft load (a draft model or an assistant): what llama.cpp says of it."""
    desc = ctypes.create_string_buffer(256)
    LL.llama_model_desc(model, desc, len(desc))
    return DraftLoaded(
        id=req.id,
        path=req.path,
        n_ctx=n_ctx,
        n_ctx_train=int(LL.llama_model_n_ctx_train(model)),
        n_vocab=n_vocab,
        description=desc.value.decode("utf-8", "replace"),
        n_params=int(LL.llama_model_n_params(model)),
        model_bytes=int(LL.llama_model_size(model)),
        n_gpu_layers=(999 if req.n_gpu_layers < 0 else req.n_gpu_layers) if offload else 0,
        type_k=type_k,
        type_v=type_v,
        load_s=time.perf_counter() - t0,
        memory_log=lines,
        checks=checks,
        **extra,
    )


def unload_draft(session: LlamaSession) -> None:
    d: Any = session.draft
    session.draft = None
    if d is not None:
        if hasattr(d, "free_context"):
            d.free_context()
        else:  # a SelfDraft (assistant): its context first, it reads the target's memory
            d.free()
        LL.llama_model_free(d.model)


def draft_for(session: LlamaSession, m: Model) -> Draft:
    """The loaded draft, its context rebuilt when the target changed since it was made."""
    d: Draft | None = session.draft
    if d is None:
        raise RequestError(ErrorKind.STATE, "no draft model is loaded: load one, or draft by n-gram lookup")
    if d.target is not m:
        if d.target_path != m.path:
            _check_pair(m.path, d.path)
        d.free_context()
        _create_context(session, d, m)
    return d
