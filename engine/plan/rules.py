"""Which cache/context settings llama.cpp (0c1e570) accepts, explained before anything loads.

llama.cpp rejects bad combinations with a log line and a NULL context, and aborts on some bad
metadata; either way the user learns nothing useful. `check_settings` applies the same rules
(notes §12, pitfalls §15) up front and words them for people: "error" for what llama.cpp would
refuse or crash on, "warning" for settings that work but waste memory or quality.
"""

from __future__ import annotations

from engine.core.memory_types import GiB, PlanSettings, Problem
from engine.gguf.hparams import NO_MEMORY_ARCHS, RECURRENT_ARCHS
from engine.gguf.inspect import GGUFInfo
from engine.plan.analytic import LLAMA_MAX_SEQ, RS_ROLLBACK_ARCHS, weights_cache_type
from engine.plan.context import BLOCKS, resolve_context, row_bytes
from engine.plan.kv_sizes import geometry

_U32_MAX = 2**32 - 1
_ABSURD_BYTES = 1 << 50  # 1 PiB of cache: metadata or settings are not plausible
# Real vocabularies stop near 262,144 tokens (Gemma). llama.cpp allocates a token table and the
# runtime scans it at load, neither of which the plan counts: a 2^31-token "no_vocab" file is a
# 100 GB allocation, so vocabularies beyond this are refused as implausible.
MAX_VOCAB = 1 << 24
_MLA_LIKE = ("deepseek4",)  # archs with the K == V type rule besides MLA models


def default_cache_type(info: GGUFInfo) -> str:
    """The K/V type that follows the weights: "bf16" for bf16-trained models (f16 K/V can
    overflow on their activations), else "f16"."""
    return weights_cache_type(info)


def _quantized(t: str) -> bool:
    return BLOCKS.get(t, (1, 0))[0] > 1


def check_settings(
    info: GGUFInfo, settings: PlanSettings, n_gpus: int, backend: str = "cpu"
) -> list[Problem]:
    """Problems with these settings for this model, most serious first."""
    s = settings
    out: list[Problem] = []

    def err(field: str, msg: str) -> None:
        out.append(Problem(field, msg, "error"))

    def warn(field: str, msg: str) -> None:
        out.append(Problem(field, msg, "warning"))

    tk, tv = s.type_k or default_cache_type(info), s.type_v or default_cache_type(info)
    for field, t in (("type_k", tk), ("type_v", tv)):
        if t not in BLOCKS:
            err(field, f"{t!r} is not a cache type llama.cpp offers (use one of {', '.join(BLOCKS)}).")
    fa = s.flash_attn
    if s.split_mode == "tensor" and fa == "auto":
        fa = "on"
    if _quantized(tv) and fa == "auto":
        fa = "on"
        warn("flash_attn", f"A {tv} V cache needs flash attention, so it will be switched on.")
    if _quantized(tv) and fa == "off":
        err(
            "type_v",
            f"A quantized V cache ({tv}) only works with flash attention: turn flash "
            "attention on or use an f16/bf16/f32 V cache.",
        )
    mla = info.mla is not None or info.architecture in _MLA_LIKE
    if mla and tk != tv:
        err(
            "type_v",
            f"This model stores one compressed cache for keys and values (MLA), so "
            f"the K and V types must match (K is {tk}, V is {tv}).",
        )
    geo = geometry(info)
    n_main = info.n_layer - info.n_layer_nextn
    for field, t, heads in (("type_k", tk, geo.head_k), ("type_v", tv, geo.head_v)):
        if fa == "off" or not _quantized(t) or t not in BLOCKS:
            continue
        block = BLOCKS[t][0]
        dims = sorted({h for h in heads[:n_main] if h % block})
        if dims:
            which = "key" if field == "type_k" else "value"
            err(
                field,
                f"{t} packs {block} values per block, which does not divide this "
                f"model's {which} head size {dims[0]}: choose f16, bf16 or f32.",
            )
    if (
        fa == "off"
        and _quantized(tk)
        and tk in BLOCKS
        and any(h % BLOCKS[tk][0] for h in geo.head_k[:n_main])
    ):
        warn(
            "type_k",
            f"{tk} does not divide the key head size; llama.cpp does not check this "
            "without flash attention and the cache rows will be truncated.",
        )

    # Parallelism, batches, devices.
    if s.n_seq_max > LLAMA_MAX_SEQ:
        err(
            "n_seq_max",
            f"llama.cpp supports at most {LLAMA_MAX_SEQ} parallel sequences (asked for {s.n_seq_max}).",
        )
    if s.n_batch <= 0 and s.n_ubatch <= 0:
        err("n_batch", "The batch and micro-batch sizes cannot both be zero.")
    elif s.n_ubatch > s.n_batch > 0:
        warn(
            "n_ubatch",
            f"The micro-batch ({s.n_ubatch}) is larger than the batch "
            f"({s.n_batch}); llama.cpp will use {s.n_batch}.",
        )
    if s.split_mode == "tensor":
        if s.flash_attn == "off":
            err("flash_attn", "Tensor split needs flash attention: turn it on or use layer split.")
        if n_gpus < 2:
            err("split_mode", "Tensor split spreads every layer over several GPUs; it needs at least two.")
    if s.split_mode == "row" and backend in ("cuda", "metal", "vulkan"):
        err(
            "split_mode",
            f"Row split is not available for {backend.upper()} in this llama.cpp "
            "version (the model would fail to load): use layer split.",
        )
    if s.split_mode == "none" and n_gpus and not -1 <= s.main_gpu < n_gpus:
        err("main_gpu", f"GPU {s.main_gpu} does not exist (there are {n_gpus}).")
    if s.tensor_split and n_gpus and len(s.tensor_split) > n_gpus:
        warn(
            "tensor_split",
            f"{len(s.tensor_split)} split ratios for {n_gpus} GPUs: the extra ratios are ignored.",
        )
    if n_gpus == 0 and s.n_gpu_layers != 0 and backend != "cpu":
        warn("n_gpu_layers", "No GPU was found: every layer stays on the CPU.")
    out += _metadata_problems(info, s, tk, tv)
    return sorted(out, key=lambda p: p.severity != "error")


def _metadata_problems(info: GGUFInfo, s: PlanSettings, tk: str, tv: str) -> list[Problem]:
    """Pitfalls §15.2/§15.13: implausible metadata that would wrap, abort or exhaust memory."""
    out: list[Problem] = []
    arch = info.architecture
    if info.n_layer_kv_from_start is not None and info.n_layer_kv_from_start < 2:
        out.append(
            Problem(
                "model",
                "The model shares the KV cache of more layers than it has; "
                "llama.cpp would crash creating the context.",
                "error",
            )
        )
    if info.tokenizer_model is None:
        out.append(
            Problem(
                "model",
                "The model has no tokenizer (tokenizer.ggml.model); llama.cpp cannot load it.",
                "error",
            )
        )
    if info.n_vocab > MAX_VOCAB:
        out.append(
            Problem(
                "model",
                f"The model declares a vocabulary of {info.n_vocab:,} tokens, "
                f"which is implausible (at most {MAX_VOCAB:,} are accepted); "
                "llama.cpp would spend gigabytes on it.",
                "error",
            )
        )
    if (
        info.n_vocab_embd
        and info.n_vocab
        and info.n_vocab_embd != info.n_vocab
        and arch not in ("eagle3", "dflash")
    ):  # their embeddings follow the target's vocabulary
        out.append(
            Problem(
                "model",
                f"The token embeddings have {info.n_vocab_embd:,} rows but "
                f"the vocabulary has {info.n_vocab:,} tokens; llama.cpp "
                "cannot load this file.",
                "error",
            )
        )
    attn = any(info.kv_layers) or max(info.n_head_kv_per_layer, default=0) > 0
    if not attn and arch not in RECURRENT_ARCHS and arch not in NO_MEMORY_ARCHS:
        out.append(
            Problem(
                "model",
                "The model declares no attention heads and no recurrent layers; it cannot run.",
                "error",
            )
        )
    if info.n_ctx_train > _U32_MAX:
        out.append(
            Problem(
                "model",
                f"The model's context length ({info.n_ctx_train:,}) does not "
                "fit in 32 bits; llama.cpp cannot load this file.",
                "error",
            )
        )
        return out
    if s.n_ctx < 0 or s.n_ctx > _U32_MAX:
        out.append(
            Problem(
                "n_ctx",
                f"Context size {s.n_ctx} is outside what llama.cpp can represent (0 to 4294967295).",
                "error",
            )
        )
        return out
    r = resolve_context(s, info.n_ctx_train, info.causal)
    if r.n_ctx_seq == 0 or r.n_ctx == 0:
        out.append(
            Problem(
                "n_ctx",
                f"A context of {s.n_ctx or info.n_ctx_train} tokens wraps "
                "around llama.cpp's 32-bit size arithmetic to zero: choose a "
                "smaller context.",
                "error",
            )
        )
        return out
    geo = geometry(info)
    if tk in BLOCKS and tv in BLOCKS:
        kv = (
            sum(row_bytes(tk, geo.k_width[il]) + row_bytes(tv, geo.v_width[il]) for il in geo.kv_layers)
            * r.n_ctx
        )
        if kv >= _ABSURD_BYTES:
            out.append(
                Problem(
                    "n_ctx",
                    f"This context would need {kv / GiB:,.0f} GiB of KV cache "
                    "— the model's metadata or the context size is "
                    "implausible.",
                    "error",
                )
            )
    if r.n_ctx_seq > info.n_ctx_train:
        out.append(
            Problem(
                "n_ctx",
                f"{r.n_ctx_seq} tokens per sequence is beyond the "
                f"{info.n_ctx_train} the model was trained on; quality "
                "usually degrades past it.",
                "warning",
            )
        )
    if s.n_ctx == 0 and info.n_ctx_train > 1 << 20:
        out.append(
            Problem(
                "n_ctx",
                f"Context 0 means the full training context "
                f"({info.n_ctx_train:,} tokens); set a size you need.",
                "warning",
            )
        )
    if geo.rec_layers and r.n_seq > 1:
        state = 4 * (geo.n_embd_r + geo.n_embd_s) * len(geo.rec_layers)
        out.append(
            Problem(
                "n_seq_max",
                f"Every parallel sequence gets its own recurrent state: {r.n_seq} × {state / 2**20:.1f} MiB.",
                "warning",
            )
        )
    if s.n_rs_seq and geo.rec_layers and arch not in RS_ROLLBACK_ARCHS:
        out.append(
            Problem(
                "n_rs_seq",
                f"{arch} cannot roll back its recurrent state; the rollback slots are ignored.",
                "warning",
            )
        )
    if default_cache_type(info) == "bf16" and "f16" in (tk, tv) and any(info.kv_layers):
        out.append(
            Problem(
                "type_k" if tk == "f16" else "type_v",
                "The weights are bf16: an f16 cache can overflow on large "
                "activations; bf16 has the same size and range.",
                "warning",
            )
        )
    return out
