"""Per-arch tables and per-layer derivations for `engine.gguf.inspect`.

Split out so the inspector stays readable: this module holds llama.cpp's (0c1e570) arch lists,
the sliding-window and recurrent-layer rules, and the weight layout per layer that memory
planning needs (which bytes move with which layer when layers are offloaded, notes §10).
Everything here is plain data in, plain data out; validation errors are raised as ValueError
and turned into one-line ModelFileErrors by the inspector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.gguf.arch_table import ARCH_LOADER, LOADER_READS

# Every architecture llama.cpp 0c1e570 maps to a model class (generated from its source, see
# engine/gguf/arch_table.py), less the projector-only "clip": any other name fails to load with
# "unknown model architecture" or "unsupported model architecture" (gptj is named but unmapped).
KNOWN_ARCHS = frozenset(ARCH_LOADER) - {"clip"}
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID_ARCHS = frozenset(
    {
        "jamba",
        "falcon-h1",
        "plamo2",
        "granitehybrid",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "qwen3next",
        "kimi-linear",
        "bailingmoe3",
        "kimi-k3",
        "glm5-next",
        "qwen35",
        "qwen35moe",
        "qwen4exp",
        "deepseek4",
        "minimax-01",
    }
)
# Hybrids whose recurrent layers come from `attention.recurrent_layers` or
# `full_attention_interval` (default 4; minimax-01: 8) instead of a zero KV head count.
_INTERVAL_HYBRIDS = frozenset({"qwen3next", "qwen35", "qwen35moe", "qwen4exp", "minimax-01"})
# Archs whose loaders skip the MTP (nextn) blocks' tensors unless llama_model_params.load_mtp
# (src/models/<arch>.cpp: ``if (!ml.load_mtp) mtp_flags |= TENSOR_SKIP``): the target's weights
# leave them out, the drafting plan (engine.plan.drafting) carries them.
MTP_SKIP_ARCHS = frozenset(
    {
        "bailingmoe3",
        "cohere2moe",
        "deepseek2",
        "deepseek32",
        "deepseek4",
        "glm-dsa",
        "glm4moe",
        "glm5-next",
        "hy_v3",
        "mimo2",
        "nemotron_h",
        "nemotron_h_moe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "step35",
    }
)
# Tensors of an MTP block that an arch's loader creates without the skip flag, so they load
# even without load_mtp (src/models/hy-v3.cpp load_block: the FFN and the shared head are
# TENSOR_NOT_REQUIRED only).
_MTP_ALWAYS_LOADED = {
    "hy_v3": ("ffn_gate", "ffn_up", "ffn_down", "ffn_exp_probs_b", "nextn.embed_tokens", "nextn.shared_head"),
}
# The BERT-style encoders: llama.cpp gives them no memory module and no output matrix.
BERT_ENCODER_ARCHS = frozenset(
    {
        "bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "eurobert",
        "modern-bert",
    }
)
# Archs that get no memory module at all (llama_model::create_memory returns nullptr).
NO_MEMORY_ARCHS = BERT_ENCODER_ARCHS | {
    "wavtokenizer-dec",
    "gemma-embedding",
    "dream",
    "llada",
    "llada-moe",
    "rnd1",
}
# SWA rules from each arch's load_arch_hparams. (period, dense_first, default window);
# period None = the bool array `attention.sliding_window_pattern` is required.
SWA_ALWAYS: dict[str, tuple[int | None, bool, int | None]] = {
    "gemma2": (2, False, 4096),
    "gemma3n": (5, False, None),
    "cohere2": (4, False, None),
    "cohere2moe": (4, True, None),
    "gpt-oss": (2, False, None),
    "exaone-moe": (4, False, 128),
    "muse-glimmer": (4, False, None),
    "gemma-embedding": (6, False, None),
    **{
        a: (None, False, None)
        for a in (
            "gemma4",
            "gemma4-assistant",
            "granite_swa",
            "mimo2",
            "step35",
            "spark2_5",
            "maple",
            "dots3note",
        )
    },
}
# Only when `attention.sliding_window` exists and is > 0. (period, dense_first)
SWA_IF_WINDOW: dict[str, tuple[int | None, bool]] = {
    "gemma3": (6, False),
    "olmo2": (4, False),
    "mellum": (4, False),
    "afmoe": (4, False),
    "laguna": (4, True),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "modern-bert": (3, True),
    "dflash": (None, False),
}
SSM_KEYS = {  # {arch}.<key> -> name in GGUFInfo.ssm (recurrent-state geometry, notes §6)
    "ssm.conv_kernel": "d_conv",
    "ssm.inner_size": "d_inner",
    "ssm.state_size": "d_state",
    "ssm.time_step_rank": "dt_rank",
    "ssm.group_count": "n_group",
    "wkv.head_size": "wkv_head_size",
    "token_shift_count": "token_shift_count",
    "shortconv.l_cache": "shortconv_l_cache",
    "kda.head_dim": "kda_head_dim",
    "full_attention_interval": "full_attention_interval",
}
# Archs whose load_arch_hparams reads `attention.key_length_mla` (from the generated table;
# mistral4 reuses deepseek2's loader). No other arch can be MLA.
MLA_ARCHS = frozenset(
    a for a, cls in ARCH_LOADER.items() if cls and "%s.attention.key_length_mla" in LOADER_READS[cls]
)
MLA_KEYS = (
    "key_length_mla",
    "value_length_mla",
    "kv_lora_rank",
    "q_lora_rank",
    "key_length_mla_swa",
    "value_length_mla_swa",
    "kv_lora_rank_swa",
)

# Archs whose memory is llama_kv_cache_dsa (notes §7): the MLA cache plus a K-only cache of the
# lightning indexer's keys (hy_v4 only when attention.indexer.top_k > 0; dots3note inside
# llama_kv_cache_dsa_iswa, whose full layers form the DSA cache).
DSA_ARCHS = frozenset({"deepseek32", "glm-dsa", "hy_v4", "dots3note"})
# Hybrids whose memory is llama_memory_hybrid_idx (notes §7): attention + recurrent state + a
# K-only indexer cache ("idx_") on the attention layers (glm5-next: those with
# attention.indexer.types set; its k-pool triples the cached row).
IDX_HYBRID_ARCHS = frozenset({"qwen4exp", "glm5-next"})
# glm-dsa default when attention.indexer.types is absent and n_ctx_train >= 1048576 (GLM-5.2,
# src/models/glm-dsa.cpp GLM_5_2_DEFAULT_INDEXER_TYPES): layers 0, 1, then every 4th from 2
# up to 74; the array has 78 initializers, the rest of LLAMA_MAX_LAYERS is zero.
_GLM52_FULL = frozenset({0, 1} | set(range(2, 78, 4)))

_INPUT_TENSORS = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")
_OUTPUT_TENSORS = ("output.", "output_norm.", "cls.", "cls_norm.", "dense_2.", "dense_3.")


@dataclass(frozen=True)
class WeightLayout:
    """Weight bytes by the layer llama.cpp assigns them to (notes §10): the input layer
    (always host), repeating layers 0..n_layer-1, and the output layer. Each as two sums:
    host buffers (each tensor padded to 32 bytes) and CUDA buffers (quantized rows padded to
    a multiple of 512 elements, then 128 bytes)."""

    input_host: int
    output_host: int
    layers_host: tuple[int, ...]
    input_cuda: int
    output_cuda: int
    layers_cuda: tuple[int, ...]
    tied_output: bool  # no output.weight: the output layer uses token_embd (copied if elsewhere)
    token_embd_host: int
    token_embd_cuda: int
    token_embd_type: str
    #: Per layer, the bytes of MTP-block tensors loaded only with load_mtp (inside layers_*).
    mtp_host: tuple[int, ...] = ()
    mtp_cuda: tuple[int, ...] = ()


def cuda_bytes(qtype: str, ne0: int, nbytes: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # lazily: see engine.gguf.reader

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    if block > 1 and ne0 % 512:
        nrows = nbytes // max(1, ne0 // block * type_size)
        nbytes += nrows and (512 - ne0 % 512) // block * type_size  # one pad per tensor
    return -(-nbytes // 128) * 128


def _mtp_skipped(arch: str, name: str) -> bool:
    """Whether a tensor of an MTP (nextn) block is left out without ``load_mtp``: the arch's
    loader passes TENSOR_SKIP to most of the block, but some create a few tensors without it."""
    if arch not in MTP_SKIP_ARCHS:
        return False
    return not name.split(".", 2)[2].startswith(_MTP_ALWAYS_LOADED.get(arch, ()))


def mtp_only(arch: str, name: str, n_layer: int, n_nextn: int) -> bool:
    """Whether tensor ``name`` belongs to an MTP (nextn) block, the last ``n_nextn`` of
    ``n_layer``, and is loaded only with ``load_mtp``."""
    if not n_nextn or not name.startswith("blk.") or name.count(".") < 2:
        return False
    part = name.split(".", 2)[1]
    return part.isdigit() and n_layer - n_nextn <= int(part) < n_layer and _mtp_skipped(arch, name)


def layer_of(name: str, n_layer: int) -> int:
    """The llama.cpp layer a tensor is created with: -1 the input layer (always host), 0 ..
    n_layer - 1 a repeating layer, n_layer the output layer; globals (rope_freqs,
    token_embd_norm, …) are created with layer 0."""
    if name.startswith("blk."):
        part = name.split(".", 2)[1]
        return int(part) if part.isdigit() and int(part) < n_layer else 0
    if name.startswith(_INPUT_TENSORS):
        return -1
    return n_layer if name.startswith(_OUTPUT_TENSORS) else 0


def weight_layout(
    tensors: Sequence[tuple[str, str, int, int, int, int]], n_layer: int, arch: str = "", n_nextn: int = 0
) -> WeightLayout:
    """Sum tensor bytes per llama.cpp layer from (name, type, n_elem, nbytes, offset, ne0); the
    MTP blocks' tensors that load only with ``load_mtp`` are also summed apart (``mtp_*``)."""
    host, cuda = [0] * (n_layer + 2), [0] * (n_layer + 2)  # [input, layers..., output]
    mtp_host, mtp_cuda = [0] * n_layer, [0] * n_layer
    tied, embd = True, ("F32", 0, 0)
    for name, qtype, _n, nbytes, _off, ne0 in tensors:
        slot = 1 + layer_of(name, n_layer)
        if mtp_only(arch, name, n_layer, n_nextn):
            mtp_host[slot - 1] += -(-nbytes // 32) * 32
            mtp_cuda[slot - 1] += cuda_bytes(qtype, ne0, nbytes)
        h, c = -(-nbytes // 32) * 32, cuda_bytes(qtype, ne0, nbytes)
        host[slot] += h
        cuda[slot] += c
        tied &= name != "output.weight"
        if name == "token_embd.weight":
            embd = (qtype, h, c)
    return WeightLayout(
        host[0],
        host[-1],
        tuple(host[1:-1]),
        cuda[0],
        cuda[-1],
        tuple(cuda[1:-1]),
        tied,
        embd[1],
        embd[2],
        embd[0],
        tuple(mtp_host),
        tuple(mtp_cuda),
    )


def recurrent_flags(
    arch: str,
    n_layer: int,
    n_layer_main: int,
    kv_heads: Sequence[int],
    n_ff: Sequence[int],
    recurrent_layers: Any,
    interval: int | None,
) -> tuple[bool, ...]:
    """llama.cpp's `hparams.is_recr(il)` per layer (notes §6)."""
    if arch in RECURRENT_ARCHS:
        return (True,) * n_layer
    if arch not in HYBRID_ARCHS:
        return (False,) * n_layer
    if arch == "falcon-h1":
        return (True,) * n_layer  # every layer has both attention and state
    if arch in ("nemotron_h", "nemotron_h_moe"):
        return tuple(il < n_layer_main and kv_heads[il] == 0 and n_ff[il] == 0 for il in range(n_layer))
    if arch in _INTERVAL_HYBRIDS:
        if recurrent_layers is not None:
            flags = tuple(bool(v) for v in recurrent_layers)
            if len(flags) != n_layer:
                raise ValueError("attention.recurrent_layers is not one flag per layer")
            return flags
        period = interval or (8 if arch == "minimax-01" else 4)  # load_arch_hparams defaults
        return tuple(il < n_layer_main and (il + 1) % period != 0 for il in range(n_layer))
    return tuple(il < n_layer_main and kv_heads[il] == 0 for il in range(n_layer))


def kv_layer_flags(
    arch: str,
    n_layer: int,
    n_layer_main: int,
    recurrent: Sequence[bool],
    n_ff: Sequence[int],
    from_start: int | None,
) -> tuple[bool, ...]:
    """Which layers own attention KV tensors in the main context (notes §2, §4, §6)."""
    if arch in RECURRENT_ARCHS or arch in NO_MEMORY_ARCHS:
        return (False,) * n_layer
    if arch == "falcon-h1":
        return (True,) * n_layer
    if arch in ("nemotron_h", "nemotron_h_moe"):
        return tuple(not recurrent[il] and n_ff[il] == 0 for il in range(n_layer))
    if arch in HYBRID_ARCHS:
        return tuple(il < n_layer_main and not recurrent[il] for il in range(n_layer))
    limit = n_layer if from_start is None or from_start < 0 else min(from_start, n_layer)
    return tuple(il < limit and il < n_layer_main for il in range(n_layer))


def indexer_layer_flags(
    arch: str,
    n_layer: int,
    n_layer_main: int,
    n_ctx_train: int,
    top_k: int,
    types: Sequence[int] | None,
    recurrent: Sequence[bool] = (),
) -> tuple[bool, ...]:
    """Which layers get a lightning-indexer key cache in the main context: llama_model::
    create_memory's `filter_lid` over `hparams.is_indexer_full(il)` (notes §7), or the
    `filter_idx` of llama_memory_hybrid_idx (attention layers: not `recurrent`). `types` is
    `attention.indexer.types` expanded to n_layer_main flags, None when the key is absent."""
    if (arch not in DSA_ARCHS and arch not in IDX_HYBRID_ARCHS) or (arch == "hy_v4" and top_k == 0):
        return (False,) * n_layer
    if types is not None and len(types) != n_layer_main:
        raise ValueError(f"attention.indexer.types has {len(types)} entries for {n_layer_main} layers")
    if arch in IDX_HYBRID_ARCHS:  # qwen4exp: every attention layer; glm5-next: types, else all
        full = [True] * n_layer_main if types is None or arch == "qwen4exp" else [bool(v) for v in types]
        recr = tuple(recurrent) or (False,) * n_layer
        return tuple(il < n_layer_main and not recr[il] and full[il] for il in range(n_layer))
    if arch == "deepseek32":  # every trunk layer; the key is not read
        full = [True] * n_layer_main
    elif types is not None:
        full = [bool(v) for v in types]
    elif arch == "glm-dsa":  # GLM 5/5.1 (shorter training context) index every layer
        full = [n_ctx_train < 1048576 or il in _GLM52_FULL for il in range(n_layer_main)]
    else:
        full = [False] * n_layer_main
    if arch == "hy_v4" and not (full and full[0]):
        raise ValueError("hy_v4 needs attention.indexer.types with an indexer in layer 0")
    return tuple(il < n_layer_main and full[il] for il in range(n_layer))
