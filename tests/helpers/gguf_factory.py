"""Tiny synthetic GGUF models that llama.cpp (0c1e570) loads, one per memory family.

Memory planning has a different formula per family (dense KV, MoE, SWA, shared KV, MLA, Mamba
state, RWKV state, hybrids, KDA hybrids, DSA indexer caches), and real models of each family are
gigabytes. These files carry realistic metadata and every tensor the arch's `load_arch_tensors`
requires, with zero data and tiny dimensions (each < 5 MB, except gemma3n at 18 MB: its shared-KV
layers start at the hard-coded layer 20 and its per-layer embedding table is 256 × n_layer
wide), so a no_alloc dry run of llama.cpp can be compared with the analytic plan in well under a
second per model.

Tensor lists were found by asking llama.cpp itself (missing tensor / wrong shape errors) or read
from the arch's `load_arch_tensors` (kimi-linear, deepseek32, gemma3n), and are stored
compactly: `GLOBAL` tensors plus per-layer-kind tensors and a layer-kind pattern string.
Later families (gpt-oss, …) are in tests/helpers/gguf_families2.py and merged into FAMILIES below.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# Families added later, and the metadata runs and tensor lists they share with the ones here,
# live in gguf_families2 (plain data).
from tests.helpers.gguf_families2 import (
    _DIMS,
    _DS_MOE,
    _DSA_INDEXER,
    _GQA,
    _INDEXER,
    _MLA,
    _MLA_KV,
    _SHARED_MOE_KV,
    FAMILIES2,
)

VOCAB_WORDS = 61  # 3 control + 256 byte tokens + words = 320 tokens
Q4_0 = gguf.GGMLQuantizationType.Q4_0
_F16 = re.compile(
    r"(attn_(q|k|v|qkv|output|q_a|q_b|kv_a_mqa|kv_b|k_b|v_b)|ffn_(up|down|gate)"
    r"(_exps|_shexp)?|token_embd|output|ssm_in|ssm_out)\.weight$"
    r"|^(per_layer_token_embd|per_layer_model_proj|altup(_unembd)?_proj)\.weight$"
    r"|\.(inp_gate|proj|laurel_[lr])\.weight$"
)  # gemma3n's wide PLE tables


@dataclass(frozen=True)
class Family:
    """One synthetic model: metadata (keys without `general.`/`tokenizer.` get `<arch>.`),
    global tensors and per-layer tensors by layer kind (pattern[i] = kind of layer i)."""

    arch: str
    kv: dict[str, Any]
    globals_: str
    layers: dict[str, str]
    pattern: str


def _shape(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in spec.split("x"))


def tensors_of(fam: Family) -> list[tuple[str, tuple[int, ...]]]:
    """[(name, ggml ne)] for a family: globals, then blk.<i>.<name> for every layer."""
    out = [(n, _shape(s)) for n, s in (t.split(":") for t in fam.globals_.split())]
    for il, kind in enumerate(fam.pattern):
        for item in fam.layers.get(kind, "").split():
            name, spec = item.split(":")
            out.append((f"blk.{il}.{name}", _shape(spec)))
    return out


def add_tokenizer(writer: gguf.GGUFWriter, n_words: int = VOCAB_WORDS) -> int:
    """A small SentencePiece-style ("llama") vocab: <unk>, <s>, </s>, 256 byte tokens, words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(n_words)]
    types = [2, 3, 3] + [6] * 256 + [1] * n_words
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.scores", [0.0] * len(tokens))
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    return len(tokens)


def _add_kv(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    sub_type = getattr(value, "gguf_sub_type", None)  # e.g. gguf_families2.U64
    if sub_type:
        writer.add_key_value(
            key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType[sub_type]
        )
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        (writer.add_uint64 if value >= 2**32 else writer.add_uint32)(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif value and all(isinstance(v, bool) for v in value):
        writer.add_array(key, [bool(v) for v in value])
    else:
        writer.add_array(key, list(value))


def write_gguf(
    path: str | Path,
    arch: str,
    kv: dict[str, Any],
    tensors: list[tuple[str, tuple[int, ...]]],
    vocab: bool = True,
    matrix_type: str = "f16",
) -> Path:
    """Write metadata + zero tensors (`matrix_type` "f16"/"bf16"/"q4_0" for matmul weights, f32
    otherwise; q4_0, a type CPU_REPACK takes, needs a first dimension divisible by 32)."""
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.name", f"synthetic-{arch}")
    writer.add_uint32("general.file_type", 1)  # MOSTLY_F16
    if vocab:
        add_tokenizer(writer)
    for key, value in kv.items():
        if value is None:
            continue
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        _add_kv(writer, full, value)
    for name, ne in tensors:
        shape = tuple(reversed(ne))
        if len(ne) < 2 or not _F16.search(name):
            writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
        elif matrix_type == "q4_0":  # zero blocks: 18 bytes (f16 scale + 16 nibble bytes) per 32
            writer.add_tensor(
                name, np.zeros((*shape[:-1], shape[-1] // 32 * 18), dtype=np.uint8), raw_dtype=Q4_0
            )
        elif matrix_type == "bf16":  # numpy has no bf16: raw 16-bit zeros
            writer.add_tensor(
                name,
                np.zeros(shape, dtype=np.uint16),
                raw_shape=shape,
                raw_dtype=gguf.GGMLQuantizationType.BF16,
            )
        else:
            writer.add_tensor(name, np.zeros(shape, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_family(name: str, directory: str | Path, matrix_type: str = "f16", **kv_changes: Any) -> Path:
    """Write FAMILIES[name] into `directory` as <name>.gguf (metadata changes allowed)."""
    fam = FAMILIES[name]
    kv = {**fam.kv, **kv_changes}
    return write_gguf(
        Path(directory) / f"{name}.gguf", fam.arch, kv, tensors_of(fam), matrix_type=matrix_type
    )


def llama_tensors(
    n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int, n_ff: int, n_vocab: int = 320
) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of a dense llama of any shape (output tied to the token embeddings)."""
    q, kv = n_head * head_dim, n_head_kv * head_dim
    layer = {
        "attn_norm.weight": (n_embd,),
        "attn_q.weight": (n_embd, q),
        "attn_k.weight": (n_embd, kv),
        "attn_v.weight": (n_embd, kv),
        "attn_output.weight": (q, n_embd),
        "ffn_norm.weight": (n_embd,),
        "ffn_gate.weight": (n_embd, n_ff),
        "ffn_down.weight": (n_ff, n_embd),
        "ffn_up.weight": (n_embd, n_ff),
    }
    out = [("token_embd.weight", (n_embd, n_vocab)), ("output_norm.weight", (n_embd,))]
    return out + [(f"blk.{il}.{k}", v) for il in range(n_layer) for k, v in layer.items()]


def write_llama(
    path: str | Path,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 64,
    n_ff: int = 256,
    matrix_type: str = "f16",
    **kv: Any,
) -> Path:
    """A dense llama of the given shape; `kv` overrides or adds metadata (None deletes)."""
    meta = {
        **_BASE,
        "block_count": n_layer,
        "embedding_length": n_embd,
        "feed_forward_length": n_ff,
        "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.dimension_count": head_dim,
        **kv,
    }
    return write_gguf(
        path,
        "llama",
        meta,
        llama_tensors(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff),
        matrix_type=matrix_type,
    )


# --- the families -----------------------------------------------------------------------------
# Shared tiny geometry: n_embd 128, 4 query heads x 64, 2 KV heads, n_ff 256, vocab 320.
_BASE = {
    **_DIMS,
    **_GQA,
    "rope.dimension_count": 64,
    "attention.layer_norm_rms_epsilon": 1e-6,
    "rope.freq_base": 10000.0,
}

_DENSE_FFN = "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256"
_MOE_FFN = (
    "ffn_norm.weight:128 ffn_gate_inp.weight:128x4 ffn_gate_exps.weight:128x64x4 "
    "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
    "ffn_gate_shexp.weight:128x64 ffn_down_shexp.weight:64x128 "
    "ffn_up_shexp.weight:128x64 exp_probs_b.bias:4"
)
# Kimi Delta Attention: 4 heads x 32, short conv 4 on q/k/v (kimi-linear.cpp).
_KDA = (
    "attn_norm.weight:128 ssm_conv1d_q.weight:4x1x128 ssm_conv1d_k.weight:4x1x128 "
    "ssm_conv1d_v.weight:4x1x128 attn_q.weight:128x128 attn_k.weight:128x128 "
    "attn_v.weight:128x128 ssm_f_a.weight:128x32 ssm_f_b.weight:32x128 "
    "ssm_beta.weight:128x4 ssm_a:1x4 ssm_dt.bias:128 ssm_g_a.weight:128x32 "
    "ssm_g_b.weight:32x128 ssm_norm.weight:32 attn_output.weight:128x128"
)
# DeepSeek V3.2 attention: MLA (q_lora 64, kv_lora 64, rope 32: K row 96, divisible by the
# 32-element blocks of quantized caches) + lightning indexer (2 heads x 64).
_DSA_ATTN = (
    "attn_norm.weight:128 attn_q_a_norm.weight:64 attn_kv_a_norm.weight:64 "
    "attn_q_a.weight:128x64 attn_q_b.weight:64x256 attn_kv_a_mqa.weight:128x96 "
    "attn_k_b.weight:32x64x4 attn_v_b.weight:64x32x4 attn_output.weight:128x128 " + _DSA_INDEXER
)

FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama",
        {**_BASE, "block_count": 4},
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_v.weight:128x128 attn_output.weight:256x128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256",
        },
        "AAAA",
    ),
    "qwen3moe": Family(
        "qwen3moe",
        {
            **_BASE,
            "block_count": 2,
            "expert_count": 4,
            "expert_used_count": 2,
            "expert_feed_forward_length": 64,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_v.weight:128x128 attn_output.weight:256x128 attn_k_norm.weight:64 "
            "attn_q_norm.weight:64 ffn_norm.weight:128 ffn_gate_inp.weight:128x4 "
            "ffn_gate_exps.weight:128x64x4 ffn_down_exps.weight:64x128x4 "
            "ffn_up_exps.weight:128x64x4",
        },
        "AA",
    ),
    "gemma2": Family(
        "gemma2",
        {
            **_BASE,
            "block_count": 4,
            "attention.sliding_window": 128,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_v.weight:128x128 attn_output.weight:256x128 post_attention_norm.weight:128 "
            "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_up.weight:128x256 "
            "ffn_down.weight:256x128 post_ffw_norm.weight:128",
        },
        "AAAA",
    ),
    "gemma3": Family(
        "gemma3",
        {**_BASE, "block_count": 7, "attention.sliding_window": 128, "rope.freq_base_swa": 10000.0},
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_v.weight:128x128 attn_output.weight:256x128 post_attention_norm.weight:128 "
            "attn_k_norm.weight:64 attn_q_norm.weight:64 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_up.weight:128x256 ffn_down.weight:256x128 "
            "post_ffw_norm.weight:128",
        },
        "AAAAAAA",
    ),
    "gemma4": Family(
        "gemma4",
        {
            "block_count": 6,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": 2,
            "attention.key_length": 64,
            "attention.value_length": 64,
            "attention.key_length_swa": 32,
            "attention.value_length_swa": 32,
            "rope.dimension_count": 64,
            "rope.dimension_count_swa": 32,
            "attention.sliding_window": 128,
            "attention.sliding_window_pattern": [True, False, True, False, True, False],
            "attention.shared_kv_layers": 2,
            "embedding_length_per_layer_input": 0,
            "attention.layer_norm_rms_epsilon": 1e-06,
            "rope.freq_base_swa": 10000.0,
            "final_logit_softcapping": 30.0,
        },
        "token_embd.weight:128x320 output_norm.weight:128 rope_freqs.weight:32",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x128 attn_k.weight:128x64 "
            "attn_output.weight:128x128 attn_q_norm.weight:32 attn_k_norm.weight:32 "
            "post_attention_norm.weight:128 ffn_norm.weight:128 ffn_gate.weight:128x256 "
            "ffn_up.weight:128x256 ffn_down.weight:256x128 post_ffw_norm.weight:128",
            "B": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_output.weight:256x128 attn_q_norm.weight:64 attn_k_norm.weight:64 "
            "post_attention_norm.weight:128 ffn_norm.weight:128 ffn_gate.weight:128x256 "
            "ffn_up.weight:128x256 ffn_down.weight:256x128 post_ffw_norm.weight:128",
            "C": "attn_norm.weight:128 attn_q.weight:128x128 attn_output.weight:128x128 "
            "attn_q_norm.weight:32 post_attention_norm.weight:128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_up.weight:128x256 ffn_down.weight:256x128 "
            "post_ffw_norm.weight:128",
            "D": "attn_norm.weight:128 attn_q.weight:128x256 attn_output.weight:256x128 "
            "attn_q_norm.weight:64 post_attention_norm.weight:128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_up.weight:128x256 ffn_down.weight:256x128 "
            "post_ffw_norm.weight:128",
        },
        "ABABCD",
    ),
    "deepseek2": Family(
        "deepseek2",
        {
            "block_count": 3,
            **_DIMS,
            "attention.head_count_kv": 1,
            "attention.key_length": 160,
            "attention.value_length": 128,
            "attention.key_length_mla": 96,
            "attention.value_length_mla": 64,
            "attention.q_lora_rank": 64,
            "attention.kv_lora_rank": 128,
            "rope.dimension_count": 32,
            "attention.layer_norm_rms_epsilon": 1e-06,
            **_DS_MOE,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 attn_q_a_norm.weight:64 attn_kv_a_norm.weight:128 "
            "attn_q_a.weight:128x64 attn_q_b.weight:64x384 attn_kv_a_mqa.weight:128x160 "
            "attn_k_b.weight:64x128x4 attn_v_b.weight:128x64x4 attn_output.weight:256x128 "
            "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_down.weight:256x128 "
            "ffn_up.weight:128x256",
            "B": "attn_norm.weight:128 attn_q_a_norm.weight:64 attn_kv_a_norm.weight:128 "
            "attn_q_a.weight:128x64 attn_q_b.weight:64x384 attn_kv_a_mqa.weight:128x160 "
            "attn_k_b.weight:64x128x4 attn_v_b.weight:128x64x4 attn_output.weight:256x128 "
            "ffn_norm.weight:128 ffn_gate_inp.weight:128x4 ffn_down_exps.weight:64x128x4 "
            "ffn_gate_exps.weight:128x64x4 ffn_up_exps.weight:128x64x4 "
            "ffn_gate_shexp.weight:128x64 ffn_down_shexp.weight:64x128 "
            "ffn_up_shexp.weight:128x64",
        },
        "ABB",
    ),
    "mamba": Family(
        "mamba",
        {
            "block_count": 2,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 0,
            "attention.head_count": 0,
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 16,
            "ssm.time_step_rank": 8,
            "attention.layer_norm_rms_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 ssm_in.weight:128x512 ssm_conv1d.weight:4x256 "
            "ssm_conv1d.bias:256 ssm_x.weight:256x40 ssm_dt.weight:8x256 ssm_dt.bias:256 "
            "ssm_a:16x256 ssm_d:256 ssm_out.weight:256x128",
        },
        "AA",
    ),
    "mamba2": Family(
        "mamba2",
        {
            "block_count": 2,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 0,
            "attention.head_count": 0,
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 64,
            "ssm.time_step_rank": 4,
            "ssm.group_count": 2,
            "attention.layer_norm_rms_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 ssm_in.weight:128x772 ssm_conv1d.weight:4x512 "
            "ssm_conv1d.bias:512 ssm_dt.bias:4 ssm_a:1x4 ssm_d:1x4 ssm_norm.weight:128x2 "
            "ssm_out.weight:256x128",
        },
        "AA",
    ),
    "rwkv6": Family(
        "rwkv6",
        {
            "block_count": 2,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 448,
            "attention.head_count": 0,
            "wkv.head_size": 64,
            "time_mix_extra_dim": 32,
            "time_decay_extra_dim": 64,
            "rescale_every_n_layers": 6,
            "attention.layer_norm_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 token_embd_norm.weight:128 token_embd_norm.bias:128 "
        "output_norm.weight:128 output_norm.bias:128 output.weight:128x320",
        {
            "A": "time_mix_lerp_fused.weight:128x1x1x5 attn_norm.weight:128 attn_norm.bias:128 "
            "attn_norm_2.weight:128 attn_norm_2.bias:128 time_mix_w1.weight:128x160 "
            "time_mix_w2.weight:32x128x5 time_mix_lerp_x.weight:128x1x1 "
            "time_mix_first.weight:64x2 time_mix_decay.weight:128 "
            "time_mix_decay_w1.weight:128x64 time_mix_decay_w2.weight:64x128 "
            "time_mix_key.weight:128x128 time_mix_value.weight:128x128 "
            "time_mix_receptance.weight:128x128 time_mix_gate.weight:128x128 "
            "time_mix_ln.weight:128 time_mix_ln.bias:128 time_mix_output.weight:128x128 "
            "channel_mix_lerp_k.weight:128x1x1 channel_mix_lerp_r.weight:128x1x1 "
            "channel_mix_key.weight:128x448 channel_mix_value.weight:448x128 "
            "channel_mix_receptance.weight:128x128",
        },
        "AA",
    ),
    "rwkv7": Family(
        "rwkv7",
        {
            "block_count": 2,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 512,
            "attention.head_count": 0,
            "wkv.head_size": 64,
            "attention.decay_lora_rank": 32,
            "attention.iclr_lora_rank": 32,
            "attention.value_residual_mix_lora_rank": 32,
            "attention.gate_lora_rank": 64,
            "attention.layer_norm_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 token_embd_norm.weight:128 token_embd_norm.bias:128 "
        "output_norm.weight:128 output_norm.bias:128 output.weight:128x320",
        {
            "A": "attn_norm.weight:128 attn_norm.bias:128 attn_norm_2.weight:128 "
            "attn_norm_2.bias:128 time_mix_w0.weight:128 time_mix_w1.weight:128x32 "
            "time_mix_w2.weight:32x128 time_mix_a0.weight:128 time_mix_a1.weight:128x32 "
            "time_mix_a2.weight:32x128 time_mix_v0.weight:128 time_mix_v1.weight:128x32 "
            "time_mix_v2.weight:32x128 time_mix_g1.weight:128x64 time_mix_g2.weight:64x128 "
            "time_mix_lerp_fused.weight:128x1x1x6 time_mix_k_k.weight:128 "
            "time_mix_k_a.weight:128 time_mix_r_k.weight:128 time_mix_key.weight:128x128 "
            "time_mix_value.weight:128x128 time_mix_receptance.weight:128x128 "
            "time_mix_ln.weight:128 time_mix_ln.bias:128 time_mix_output.weight:128x128 "
            "channel_mix_lerp_k.weight:128x1x1 channel_mix_key.weight:128x512 "
            "channel_mix_value.weight:512x128",
        },
        "AA",
    ),
    "jamba": Family(
        "jamba",
        {
            "block_count": 4,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": [0, 2, 0, 0],
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 16,
            "ssm.time_step_rank": 8,
            "attention.layer_norm_rms_epsilon": 1e-06,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_norm.weight:128 ssm_in.weight:128x512 ssm_conv1d.weight:4x256 "
            "ssm_conv1d.bias:256 ssm_x.weight:256x40 ssm_dt_norm.weight:8 "
            "ssm_dt.weight:8x256 ssm_dt.bias:256 ssm_b_norm.weight:16 ssm_c_norm.weight:16 "
            "ssm_a:16x256 ssm_d:256 ssm_out.weight:256x128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256",
            "B": "attn_norm.weight:128 attn_q.weight:128x128 attn_k.weight:128x64 "
            "attn_v.weight:128x64 attn_output.weight:128x128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256",
        },
        "ABAA",
    ),
    "granitehybrid": Family(
        "granitehybrid",
        {
            "block_count": 4,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": [0, 0, 2, 0],
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 32,
            "ssm.time_step_rank": 4,
            "ssm.group_count": 1,
            "attention.layer_norm_rms_epsilon": 1e-05,
            "rope.dimension_count": 32,
            "logit_scale": 1.0,
            "residual_scale": 0.25,
            "embedding_scale": 12.0,
            "attention.scale": 0.03,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "ssm_conv1d.bias:320 attn_norm.weight:128 ssm_in.weight:128x580 "
            "ssm_conv1d.weight:4x320 ssm_dt.bias:4 ssm_a:1x4 ssm_d:1x4 ssm_norm.weight:256x1 "
            "ssm_out.weight:256x128 ffn_norm.weight:128 ffn_gate.weight:128x256 "
            "ffn_down.weight:256x128 ffn_up.weight:128x256",
            "B": "attn_norm.weight:128 attn_q.weight:128x128 attn_k.weight:128x64 "
            "attn_v.weight:128x64 attn_output.weight:128x128 ffn_norm.weight:128 "
            "ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256",
        },
        "AABA",
    ),
    "nemotron_h": Family(
        "nemotron_h",
        {
            "block_count": 4,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": [0, 256, 0, 0],
            "attention.head_count": 4,
            "attention.head_count_kv": [0, 0, 0, 2],
            "attention.key_length": 32,
            "attention.value_length": 32,
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 32,
            "ssm.time_step_rank": 4,
            "ssm.group_count": 2,
            "attention.layer_norm_epsilon": 1e-05,
            "attention.layer_norm_rms_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "ssm_conv1d.bias:384 attn_norm.weight:128 ssm_in.weight:128x644 "
            "ssm_conv1d.weight:4x384 ssm_dt.bias:4 ssm_a:1x4 ssm_d:1x4 ssm_norm.weight:128x2 "
            "ssm_out.weight:256x128",
            "B": "attn_norm.weight:128 ffn_down.weight:256x128 ffn_up.weight:128x256",
            "C": "attn_norm.weight:128 attn_q.weight:128x128 attn_k.weight:128x64 "
            "attn_v.weight:128x64 attn_output.weight:128x128",
        },
        "ABAC",
    ),
    "qwen3next": Family(
        "qwen3next",
        {
            "block_count": 4,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": 2,
            "attention.key_length": 64,
            "attention.value_length": 64,
            "rope.dimension_count": 16,
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 128,
            "ssm.state_size": 32,
            "ssm.time_step_rank": 4,
            "ssm.group_count": 2,
            "full_attention_interval": 4,
            "expert_count": 4,
            "expert_used_count": 2,
            "expert_feed_forward_length": 64,
            "expert_shared_feed_forward_length": 64,
            "attention.layer_norm_rms_epsilon": 1e-06,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "attn_qkv.weight:128x256 attn_gate.weight:128x128 attn_norm.weight:128 "
            "post_attention_norm.weight:128 ssm_conv1d.weight:4x256 ssm_dt.bias:4 ssm_a:4 "
            "ssm_ba.weight:128x8 ssm_norm.weight:32 ssm_out.weight:128x128 "
            "ffn_gate_inp.weight:128x4 ffn_down_exps.weight:64x128x4 "
            "ffn_gate_exps.weight:128x64x4 ffn_up_exps.weight:128x64x4 "
            "ffn_gate_inp_shexp.weight:128 ffn_gate_shexp.weight:128x64 "
            "ffn_up_shexp.weight:128x64 ffn_down_shexp.weight:64x128",
            "B": "attn_norm.weight:128 post_attention_norm.weight:128 attn_q.weight:128x512 "
            "attn_k.weight:128x128 attn_v.weight:128x128 attn_output.weight:256x128 "
            "attn_q_norm.weight:64 attn_k_norm.weight:64 ffn_gate_inp.weight:128x4 "
            "ffn_down_exps.weight:64x128x4 ffn_gate_exps.weight:128x64x4 "
            "ffn_up_exps.weight:128x64x4 ffn_gate_inp_shexp.weight:128 "
            "ffn_gate_shexp.weight:128x64 ffn_up_shexp.weight:128x64 "
            "ffn_down_shexp.weight:64x128",
        },
        "AAAB",
    ),
    "lfm2": Family(
        "lfm2",
        {
            "block_count": 4,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": [0, 2, 0, 2],
            "shortconv.l_cache": 3,
            "attention.layer_norm_rms_epsilon": 1e-05,
            "vocab_size": 320,
        },
        "token_embd.weight:128x320 token_embd_norm.weight:128",
        {
            "A": "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_down.weight:256x128 "
            "ffn_up.weight:128x256 attn_norm.weight:128 shortconv.conv.weight:3x128 "
            "shortconv.in_proj.weight:128x384 shortconv.out_proj.weight:128x128",
            "B": "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_down.weight:256x128 "
            "ffn_up.weight:128x256 attn_norm.weight:128 attn_q_norm.weight:32 "
            "attn_k_norm.weight:32 attn_q.weight:128x128 attn_k.weight:128x64 "
            "attn_v.weight:128x64 attn_output.weight:128x128",
        },
        "ABAB",
    ),
    "falcon-h1": Family(
        "falcon-h1",
        {
            "block_count": 2,
            "context_length": 4096,
            "embedding_length": 128,
            "feed_forward_length": 256,
            "attention.head_count": 4,
            "attention.head_count_kv": 2,
            "attention.key_length": 64,
            "attention.value_length": 64,
            "rope.dimension_count": 64,
            "ssm.conv_kernel": 4,
            "ssm.inner_size": 256,
            "ssm.state_size": 32,
            "ssm.time_step_rank": 4,
            "ssm.group_count": 1,
            "attention.layer_norm_rms_epsilon": 1e-05,
        },
        "token_embd.weight:128x320 output_norm.weight:128",
        {
            "A": "ssm_conv1d.bias:320 ssm_in.weight:128x580 ssm_conv1d.weight:4x320 ssm_dt.bias:4 "
            "ssm_a:1x4 ssm_d:1x4 ssm_out.weight:256x128 attn_q.weight:128x256 "
            "attn_k.weight:128x128 attn_v.weight:128x128 attn_output.weight:256x128 "
            "attn_norm.weight:128 ffn_norm:128 ffn_gate.weight:128x256 "
            "ffn_down.weight:256x128 ffn_up.weight:128x256",
        },
        "AA",
    ),
    # Kimi-Linear: KDA recurrent layers (n_head_kv 0) + MLA attention layers (K-only cache),
    # layer 0 dense FFN, the rest MoE; 3 KDA : 1 MLA like the 48B model.
    "kimi-linear": Family(
        "kimi-linear",
        {
            "block_count": 4,
            **_DIMS,
            "attention.head_count_kv": [0, 0, 0, 1],
            **_MLA_KV,
            "attention.kv_lora_rank": 64,
            "rope.dimension_count": 32,
            "ssm.conv_kernel": 4,
            "kda.head_dim": 32,
            "attention.layer_norm_rms_epsilon": 1e-05,
            "leading_dense_block_count": 1,
            **_SHARED_MOE_KV,
            "expert_gating_func": 2,
            "expert_weights_scale": 2.4,
            "expert_weights_norm": True,
            "vocab_size": 320,
        },
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _KDA + " " + _DENSE_FFN,
            "B": _KDA + " " + _MOE_FFN,
            "C": "attn_norm.weight:128 attn_kv_a_norm.weight:64 attn_q.weight:128x256 "
            "attn_kv_a_mqa.weight:128x96 attn_k_b.weight:32x64x4 attn_v_b.weight:64x32x4 "
            "attn_output.weight:128x128 " + _MOE_FFN,
        },
        "ABBC",
    ),
    # DeepSeek V3.2: MLA main cache + lightning-indexer K cache (one 64-wide head per layer; the
    # indexer's Hadamard rotation needs a multiple of 64).
    "deepseek32": Family(
        "deepseek32",
        {
            "block_count": 3,
            **_DIMS,
            "attention.head_count_kv": 1,
            **_MLA,
            **_INDEXER,
            "attention.layer_norm_rms_epsilon": 1e-06,
            **_DS_MOE,
            "expert_weights_scale": 2.5,
        },
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _DSA_ATTN + " " + _DENSE_FFN,
            "B": _DSA_ATTN + " " + _MOE_FFN,
        },
        "ABB",
    ),
    # Gemma 3n: SWA period 5, layers >= 20 reuse the KV of layers 18 (SWA) / 19 (full);
    # altup (4 streams), laurel (rank 64) and 256-wide per-layer embeddings are fixed in 0c1e570.
    "gemma3n": Family(
        "gemma3n",
        {
            **_BASE,
            "block_count": 22,
            "attention.sliding_window": 128,
            "rope.freq_base_swa": 10000.0,
            "final_logit_softcapping": 30.0,
        },
        "token_embd.weight:128x320 output_norm.weight:128 altup_proj.weight:128x128x3 "
        "altup_unembd_proj.weight:128x128x3 per_layer_token_embd.weight:5632x320 "
        "per_layer_model_proj.weight:128x5632 per_layer_proj_norm.weight:256",
        {
            "A": "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
            "attn_v.weight:128x128 attn_output.weight:256x128 attn_q_norm.weight:64 "
            "attn_k_norm.weight:64 post_attention_norm.weight:128 "
            + _DENSE_FFN
            + " post_ffw_norm.weight:128 inp_gate.weight:128x256 proj.weight:256x128 "
            "post_norm.weight:128 altup_correct_coef.weight:4x4 "
            "altup_correct_scale.weight:128 altup_predict_coef.weight:4x16 "
            "altup_router.weight:128x4 altup_router_norm.weight:128 "
            "laurel_l.weight:128x64 laurel_r.weight:64x128 laurel_post_norm.weight:128",
        },
        "A" * 22,
    ),
}


def write_glm_dsa(path: str | Path, pattern: str = "ABCB", **kv: Any) -> Path:
    """A GLM-DSA model: deepseek32's shapes, but only layers marked A/C (dense/MoE) carry the
    lightning indexer; B layers (MoE) reuse the previous indexer's top-k and have none. Which
    layers own an indexer cache follows `attention.indexer.types` (`kv`, None deletes), else
    the GLM-5 (every layer) or GLM-5.2 (n_ctx_train >= 2^20) default."""
    base = FAMILIES["deepseek32"]
    plain = " ".join(t for t in _DSA_ATTN.split() if not t.startswith("indexer."))
    meta = {**base.kv, "block_count": len(pattern), "expert_gating_func": None, **kv}
    fam = Family(
        "glm-dsa",
        meta,
        base.globals_,
        {"A": _DSA_ATTN + " " + _DENSE_FFN, "B": plain + " " + _MOE_FFN, "C": _DSA_ATTN + " " + _MOE_FFN},
        pattern,
    )
    return write_gguf(path, "glm-dsa", meta, tensors_of(fam))


FAMILIES.update({name: Family(*fam) for name, fam in FAMILIES2.items()})


def split_llama(folder: Path, **kv: object) -> list[Path]:
    """write_llama's model, written by gguf-py as a split GGUF (-0000i-of-0000N.gguf)."""
    real = gguf.GGUFWriter
    gguf.GGUFWriter = functools.partial(real, split_max_tensors=12)  # type: ignore[misc]
    try:
        write_llama(folder / "tiny-llama-split-F16.gguf", **kv)  # type: ignore[arg-type]
    finally:
        gguf.GGUFWriter = real  # type: ignore[misc]
    return sorted(folder.glob("tiny-llama-split-F16-*-of-*.gguf"))


def write_wide_moe(path: str | Path, n_layer: int = 8, n_expert: int = 128) -> Path:
    """A qwen3moe whose routed experts outweigh the rest of each layer (``n_expert`` experts of
    FAMILIES["qwen3moe"]'s widths, ``n_layer`` layers), as in real MoE models."""
    fam = FAMILIES["qwen3moe"]
    layer = fam.layers["A"].replace("x4", f"x{n_expert}")  # the router's and experts' last dim
    kv = {**fam.kv, "block_count": n_layer, "expert_count": n_expert}
    wide = Family(fam.arch, kv, fam.globals_, {"A": layer}, "A" * n_layer)
    return write_gguf(path, fam.arch, kv, tensors_of(wide))
