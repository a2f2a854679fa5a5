"""The drafting context of self-drafting (engine.child.selfdraft): made from the target's context.

The drafting context is always built from the target's *resolved* context (n_ctx, n_seq_max,
kv_unified, swa_full, flash attention, K/V types, n_batch/n_ubatch): an assistant whose stream
count differs aborts the process in ggml_view_4d, and a flash-attention mismatch gives wrong
drafts silently. It is created after the target, freed before it, recreated with it. Kept apart
from the drafting itself, which never needs to know how its context was made.
"""

from __future__ import annotations

import os
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.errors import ErrorKind, RequestError
from engine.child.llama_ext import ext
from engine.child.model import Model, flash_type, ggml_type_id, params_like
from engine.child.selfdraft import SelfDraft
from engine.plan.assistant_rules import outgrows


def resolved_flash(lines: list[str], asked: str) -> str:
    """The flash-attention choice llama.cpp actually made for a context ("on"/"off"), read from its
    log: "auto" is resolved per device inside llama_init_from_model and no getter exposes it."""
    if asked != "auto":
        return asked
    for line in reversed(lines):
        if "Flash Attention enabled" in line or "enabling flash_attn" in line:
            return "on"
        if "Flash Attention not supported" in line or ("Flash Attention" in line and "disabled" in line):
            return "off"
    return "auto"


def drafting_params(m: Model, settings: Any, flash: str, ctx_other: Any) -> LL.llama_context_params:
    """The drafting context's parameters, taken from the target's live context and never from user
    input or the drafter's own defaults (its training context may be far larger than the fitted
    target's)."""
    cp = params_like(m.ctx)
    cp.flash_attn_type = flash_type(flash)
    cp.type_k, cp.type_v = ggml_type_id(settings.type_k), ggml_type_id(settings.type_v)
    cp.swa_full, cp.kv_unified, cp.offload_kqv = settings.swa_full, settings.kv_unified, settings.offload_kqv
    cp.ctx_type = LL.LLAMA_CONTEXT_TYPE_MTP
    cp.n_rs_seq = 0
    cp.ctx_other = ctx_other
    return cp


def preflight(cp: LL.llama_context_params, m: Model) -> None:
    """Refuse, in one sentence, a drafting context that would not follow the target's size."""
    t = m.ctx
    why = outgrows(
        {
            "context": int(LL.llama_n_ctx(t)),
            "sequences": int(LL.llama_n_seq_max(t)),
            "batch": int(LL.llama_n_batch(t)),
        },
        {"context": int(cp.n_ctx), "sequences": int(cp.n_seq_max), "batch": int(cp.n_batch)},
    )
    if why:
        raise RequestError(ErrorKind.PARAMS, why)


def create(
    kind: str, m: Model, settings: Any, flash: str, log: Any, model: Any = None, path: str = ""
) -> SelfDraft:
    """A drafting context for target ``m``: the target's own heads (``model`` None) or an assistant."""
    x = ext()
    if isinstance(x, str):
        raise RequestError(ErrorKind.PARAMS, x)
    dmodel = model if model is not None else m.model
    n_nextn = int(LL.llama_model_n_layer_nextn(dmodel))
    if n_nextn == 0:
        raise RequestError(
            ErrorKind.PARAMS,
            f"{_name(m.path)} has no MTP (nextn) layers, so it cannot draft for itself; drafting is off",
        )
    n_embd = int(LL.llama_model_n_embd_out(dmodel))
    t_embd = int(LL.llama_model_n_embd_out(m.model))
    if n_embd != t_embd:
        raise RequestError(
            ErrorKind.PARAMS,
            f"the drafter's output size {n_embd} differs from the target's hidden "
            f"size {t_embd}; drafting is off",
        )
    cp = drafting_params(m, settings, flash, m.ctx)
    what = "the MTP drafting context" if model is None else f"the assistant's context ({_name(path)})"
    preflight(cp, m)
    log.recent_errors = []
    ctx = LL.llama_init_from_model(dmodel, cp)
    if not ctx:
        why = log.failure_reason("unknown reason")
        raise RequestError(
            ErrorKind.PARAMS, f"could not create {what} of {cp.n_ctx} tokens (the target's): {why}"
        )
    other = x.get_ctx_other(ctx)
    shared = bool(other) and int(other) == int(m.ctx)  # type: ignore[call-overload]  # ctypes handles
    sd = SelfDraft(
        kind=kind,
        x=x,
        target=m,
        ctx=ctx,
        n_embd=n_embd,
        n_heads=max(1, n_nextn),
        shared=shared,
        n_vocab=int(LL.llama_vocab_n_tokens(LL.llama_model_get_vocab(dmodel))),
        model=model,
        path=path,
    )
    if int(LL.llama_n_ctx(ctx)) != m.n_ctx:
        sd.free()
        raise RequestError(
            ErrorKind.PARAMS,
            f"{what} got {LL.llama_n_ctx(ctx)} tokens of context, not the "
            f"target's {m.n_ctx}; drafting is off",
        )
    return sd


def _name(path: str) -> str:
    return os.path.basename(path)
