"""More synthetic families for tests/helpers/gguf_factory.py (merged into its FAMILIES).

Kept apart so the fixture file stays readable: gpt-oss (sliding window every other layer,
attention sinks, biased MoE), deepseek4, minimax-m3 and the hybrid-indexer archs. Tensor lists
are read from each arch's `load_arch_tensors` in llama.cpp 0c1e570 (src/models/*.cpp). Plain
data (arch, metadata, global tensors, tensors per layer kind, layer-kind pattern) that
gguf_factory wraps in its `Family`; this module imports nothing from the tests, so it can be
imported under any package name.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Family(NamedTuple):
    """Same fields as gguf_factory.Family."""

    arch: str
    kv: dict[str, Any]
    globals_: str
    layers: dict[str, str]
    pattern: str


class U64(tuple):
    """An array written with uint64 elements (gguf_factory._add_kv reads `gguf_sub_type`)."""

    gguf_sub_type = "UINT64"


# Metadata runs shared by several families (here and in gguf_factory), merged as `{**_X, ...}`.
# GGUF writes keys in dict order, so a run is shared only where families list the keys in the
# same order; a later key of the same name changes the value in place.
_DIMS = {
    "context_length": 4096,
    "embedding_length": 128,
    "feed_forward_length": 256,
    "attention.head_count": 4,
}
_GQA = {"attention.head_count_kv": 2, "attention.key_length": 64, "attention.value_length": 64}
# DeepSeek-style MLA: kv_lora 64 + rope 32 = K row 96; decompressed heads 64 (K) / 32 (V).
_MLA_KV = {
    "attention.key_length": 96,
    "attention.value_length": 64,
    "attention.key_length_mla": 64,
    "attention.value_length_mla": 32,
}
_MLA = {**_MLA_KV, "attention.q_lora_rank": 64, "attention.kv_lora_rank": 64, "rope.dimension_count": 32}
# MoE: 4 experts x 64, 2 used (+ 1 shared); DeepSeek style adds one dense lead layer and
# sigmoid gating with normalized, scaled weights.
_MOE_KV = {"expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 64}
_SHARED_MOE_KV = {**_MOE_KV, "expert_shared_count": 1}
_DS_MOE = {
    "leading_dense_block_count": 1,
    **_SHARED_MOE_KV,
    "expert_gating_func": 2,
    "expert_weights_norm": True,
    "expert_weights_scale": 1.0,
}
# Lightning-style indexer: 2 heads x 64, top-k 256.
_INDEXER = {
    "attention.indexer.head_count": 2,
    "attention.indexer.key_length": 64,
    "attention.indexer.top_k": 256,
}
_MHC4 = {
    "hyper_connection.count": 4,
    "hyper_connection.sinkhorn_iterations": 20,
    "hyper_connection.epsilon": 1e-06,
}


_ATTN_128 = (
    "attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
    "attn_v.weight:128x128 attn_output.weight:256x128"
)

_DENSE = "ffn_gate.weight:128x256 ffn_down.weight:256x128 ffn_up.weight:128x256"
# Sigmoid-routed MoE (expert bias exp_probs_b) + shared expert, without the ffn_norm.
_ROUTED_MOE = (
    "ffn_gate_inp.weight:128x4 exp_probs_b.bias:4 ffn_gate_exps.weight:128x64x4 "
    "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
    "ffn_gate_shexp.weight:128x64 ffn_down_shexp.weight:64x128 "
    "ffn_up_shexp.weight:128x64"
)
_DSA_INDEXER = (
    "indexer.k_norm.weight:64 indexer.k_norm.bias:64 indexer.proj.weight:128x2 "
    "indexer.attn_k.weight:128x64 indexer.attn_q_b.weight:64x128"
)

_MOE = (
    "ffn_norm.weight:128 ffn_gate_inp.weight:128x4 ffn_gate_exps.weight:128x64x4 "
    "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
    "ffn_gate_shexp.weight:128x64 ffn_down_shexp.weight:64x128 ffn_up_shexp.weight:128x64"
)
# DeepSeek V4: one 64-wide K head per layer (MLA-like, K only), 4 query heads, q_lora 64,
# grouped low-rank output (2 groups x 32), 4 hyper-connection streams (hc_dim 512, mix 24),
# sinks; per-layer compression ratio 0 (window only), 4 (CSA + lightning indexer, 2 heads x
# 64) or 128 (HCA).
_DSV4_ATTN = (
    "attn_norm.weight:128 attn_sinks.weight:4 attn_q_a.weight:128x64 "
    "attn_q_a_norm.weight:64 attn_q_b.weight:64x256 attn_kv.weight:128x64 "
    "attn_kv_a_norm.weight:64 attn_output_a.weight:128x64 attn_output_b.weight:64x128 "
    "hc_attn_fn.weight:512x24 hc_attn_base.weight:24 hc_attn_scale.weight:3 "
    "hc_ffn_fn.weight:512x24 hc_ffn_base.weight:24 hc_ffn_scale.weight:3 "
    "exp_probs_b.bias:4 " + _MOE
)
_DSV4_CSA = (
    "attn_compressor_kv.weight:128x128 attn_compressor_gate.weight:128x128 "
    "attn_compressor_ape.weight:128x4 attn_compressor_norm.weight:64 "
    "indexer.proj.weight:128x2 indexer.attn_q_b.weight:64x128 "
    "indexer_compressor_kv.weight:128x128 indexer_compressor_gate.weight:128x128 "
    "indexer_compressor_ape.weight:128x4 indexer_compressor_norm.weight:64"
)
_DSV4_HCA = (
    "attn_compressor_kv.weight:128x64 attn_compressor_gate.weight:128x64 "
    "attn_compressor_ape.weight:64x128 attn_compressor_norm.weight:64"
)

FAMILIES2: dict[str, Family] = {
    # GPT-OSS: SWA on even layers (period 2), attention sinks per head, biased q/k/v/o and a
    # biased SwiGLU-OAI MoE (softmax-weighted, no shared expert).
    "gpt-oss": Family(
        "gpt-oss",
        {
            "block_count": 4,
            **_DIMS,
            **_GQA,
            "rope.dimension_count": 64,
            "attention.sliding_window": 128,
            "attention.layer_norm_rms_epsilon": 1e-05,
            "rope.freq_base": 150000.0,
            **_MOE_KV,
        },
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _ATTN_128 + " attn_q.bias:256 attn_k.bias:128 attn_v.bias:128 "
            "attn_output.bias:128 post_attention_norm.weight:128 attn_sinks.weight:4 "
            "ffn_gate_inp.weight:128x4 ffn_gate_inp.bias:4 ffn_gate_exps.weight:128x64x4 "
            "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
            "ffn_gate_exps.bias:64x4 ffn_down_exps.bias:128x4 ffn_up_exps.bias:64x4",
        },
        "AAAA",
    ),
    "deepseek4": Family(
        "deepseek4",
        {
            "block_count": 4,
            **_DIMS,
            "attention.head_count_kv": 1,
            "attention.key_length": 64,
            "attention.value_length": 64,
            "rope.dimension_count": 32,
            "attention.q_lora_rank": 64,
            "attention.sliding_window": 128,
            "attention.layer_norm_rms_epsilon": 1e-06,
            **_SHARED_MOE_KV,
            "expert_weights_scale": 1.5,
            "expert_weights_norm": True,
            "expert_gating_func": 4,
            "swiglu_clamp_exp": 10.0,
            **_INDEXER,
            "attention.output_group_count": 2,
            "attention.output_lora_rank": 32,
            "attention.compress_rope_freq_base": 160000.0,
            **_MHC4,
            "hash_layer_count": 0,
            "attention.compress_ratios": [0, 4, 128, 4],
        },
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320 "
        "output_hc_fn.weight:512x4 output_hc_base.weight:4 output_hc_scale.weight:1",
        {"A": _DSV4_ATTN, "B": _DSV4_ATTN + " " + _DSV4_CSA, "C": _DSV4_ATTN + " " + _DSV4_HCA},
        "ABCB",
    ),
    # MiniMax-M3: GQA with per-head QK-norm and partial rotary (32 of 64), one dense lead layer,
    # then sigmoid-routed MoE + shared expert and the MSA indexer (2 heads x 128; top 4 blocks
    # of 64 tokens, 1 local block); indexer keys 128 wide, twice the
    # head size, so the indexer cache's K (128) and V (64, the head size) differ.
    "minimax-m3": Family(
        "minimax-m3",
        {
            "block_count": 3,
            **_DIMS,
            **_GQA,
            "rope.dimension_count": 32,
            "attention.layer_norm_rms_epsilon": 1e-06,
            "leading_dense_block_count": 1,
            **_SHARED_MOE_KV,
            "expert_weights_scale": 2.0,
            "expert_weights_norm": True,
            "expert_gating_func": 2,
            "attention.indexer.head_count": 2,
            "attention.indexer.key_length": 128,
            "attention.indexer.top_k": 4,
            "attention.indexer.block_size": 64,
            "attention.indexer.local_blocks": 1,
        },
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _ATTN_128 + " attn_q_norm.weight:64 attn_k_norm.weight:64 ffn_norm.weight:128 " + _DENSE,
            "B": _ATTN_128
            + " attn_q_norm.weight:64 attn_k_norm.weight:64 exp_probs_b.bias:4 "
            + _MOE
            + " indexer.q_proj.weight:128x256 indexer.k_proj.weight:128x128 "
            "indexer.q_norm.weight:128 indexer.k_norm.weight:128",
        },
        "ABB",
    ),
}

# Qwen4-exp: Gated DeltaNet layers (ssm conv 4, 2 k-heads x 32, 4 v-heads x 32) with one full
# attention layer in 4 (q|gate interleaved, QK-norm, mrope sections), 2 low-rank
# hyper-connection streams in place of layer norms, sigmoid-gated shared expert, the QSA
# indexer (2 heads x 64, blocks of compress_ratios[il] tokens) on attention layers, and the
# per-layer n-gram embeddings (PLE) on linear layer 0, whose conv history is the recurrent
# memory's P row: (conv_kernel - 1) x ngram_size x hc x n_embd floats.
_Q4_HC = (
    "hc_attn_norm.weight:128x2 hc_attn_down.weight:256x16 hc_attn_up.weight:16x256 "
    "hc_attn_inject.weight:256x2 hc_ffn_norm.weight:128x2 hc_ffn_down.weight:256x16 "
    "hc_ffn_up.weight:16x256 hc_ffn_inject.weight:256x2 "
    "ffn_gate_inp.weight:128x4 ffn_down_exps.weight:64x128x4 "
    "ffn_gate_exps.weight:128x64x4 ffn_up_exps.weight:128x64x4 "
    "ffn_gate_inp_shexp.weight:128 ffn_gate_shexp.weight:128x64 "
    "ffn_up_shexp.weight:128x64 ffn_down_shexp.weight:64x128"
)
_Q4_GDN = (
    "attn_qkv.weight:128x256 attn_gate.weight:128x128 ssm_conv1d.weight:4x256 "
    "ssm_dt.bias:4 ssm_a:4 ssm_beta.weight:128x4 ssm_alpha.weight:128x4 "
    "ssm_norm.weight:32 ssm_out.weight:128x128 " + _Q4_HC
)
_Q4_PLE = (
    "ple_key.weight:128x256 ple_value.weight:128x128 ple_norm_key.weight:128x2 "
    "ple_norm_query.weight:128x2 ple_norm_conv.weight:128x2 ple_conv1d.weight:4x256"
)
_Q4_ATTN = (
    "attn_q.weight:128x512 attn_k.weight:128x128 attn_v.weight:128x128 "
    "attn_output.weight:256x128 attn_q_norm.weight:64 attn_k_norm.weight:64 "
    "indexer.q_proj.weight:128x128 indexer.k_proj.weight:128x64 "
    "indexer.q_norm.weight:64 indexer.k_norm.weight:64 " + _Q4_HC
)

FAMILIES2["qwen4exp"] = Family(
    "qwen4exp",
    {
        "block_count": 4,
        **_DIMS,
        **_GQA,
        "rope.dimension_count": 64,
        "rope.dimension_sections": [16, 8, 8, 0],
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 128,
        "ssm.state_size": 32,
        "ssm.time_step_rank": 4,
        "ssm.group_count": 2,
        "full_attention_interval": 4,
        **_MOE_KV,
        "expert_shared_feed_forward_length": 64,
        "attention.layer_norm_rms_epsilon": 1e-06,
        "hyper_connection.count": 2,
        "hyper_connection.low_rank": 16,
        **_INDEXER,
        "attention.indexer.top_k": 64,
        "attention.compress_ratios": [0, 0, 0, 4],
        "ple.layers": [0],
        "ple.ngram_size": 3,
        "ple.heads_per_ngram": 2,
        "ple.conv_kernel": 4,
        "ple.layer_multipliers": U64((3, 5, 7)),
        "ple.head_offsets": U64((0, 64, 128, 192)),
        "ple.head_vocab_sizes": U64((64, 64, 64, 64)),
        "ple.eos_token_id": 2,
        "embedding_length_per_layer_input": 32,
    },
    "token_embd.weight:128x320 output_hc_norm.weight:128x2 output_hc_down.weight:256x16 "
    "output_hc_up.weight:16x256 per_layer_token_embd.weight:32x256",
    {"P": _Q4_GDN + " " + _Q4_PLE, "R": _Q4_GDN, "A": _Q4_ATTN},
    "PRRA",
)

# GLM5-Next: KDA linear layers (n_head_kv 0: 4 heads x 32, conv 4) and one MLA layer with a
# k-pool DSA indexer (2 heads x 64, kpool 2: the idx_ cache row is key, gate and pooled
# values, 3 x 64), 4 mHC streams (required), dense lead + sigmoid-routed MoE. The MLA
# is NoPE (rope.dimension_count 0, asserted), so its K row is the kv_lora_rank, 64.
_G5_HC = (
    "attn_norm.weight:128 ffn_norm.weight:128 hc_attn_fn.weight:512x24 "
    "hc_attn_base.weight:24 hc_attn_scale.weight:3 hc_ffn_fn.weight:512x24 "
    "hc_ffn_base.weight:24 hc_ffn_scale.weight:3"
)
_G5_KDA = (
    "ssm_conv1d_q.weight:4x1x128 ssm_conv1d_k.weight:4x1x128 ssm_conv1d_v.weight:4x1x128 "
    "attn_q.weight:128x128 attn_k.weight:128x128 attn_v.weight:128x128 "
    "ssm_f_a.weight:128x32 ssm_f_b.weight:32x128 ssm_beta.weight:128x4 ssm_a:4 "
    "ssm_dt.bias:128 ssm_g_a.weight:128x32 ssm_g_b.weight:32x128 ssm_norm.weight:32 "
    "attn_output.weight:128x128"
)
_G5_MLA = (
    "attn_q_a_norm.weight:64 attn_kv_a_norm.weight:64 attn_q_a.weight:128x64 "
    "attn_q_b.weight:64x256 attn_kv_a_mqa.weight:128x64 attn_k_b.weight:64x64x4 "
    "attn_v_b.weight:64x32x4 attn_output.weight:128x128 "
    + _DSA_INDEXER
    + " indexer_compressor_gate.weight:128x64 indexer_compressor_ape.weight:64x2"
)

FAMILIES2["glm5-next"] = Family(
    "glm5-next",
    {
        "block_count": 4,
        **_DIMS,
        "attention.head_count_kv": [0, 0, 0, 1],
        **_MLA,
        "attention.key_length": 64,
        "rope.dimension_count": 0,
        "ssm.conv_kernel": 4,
        "kda.head_dim": 32,
        "attention.layer_norm_rms_epsilon": 1e-05,
        "leading_dense_block_count": 1,
        **_SHARED_MOE_KV,
        "expert_weights_scale": 2.5,
        "expert_weights_norm": True,
        **_INDEXER,
        "attention.indexer.top_k": 64,
        "attention.indexer.kpool": 2,
        **_MHC4,
    },
    "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
    {
        "A": _G5_HC + " " + _G5_KDA + " " + _DENSE,
        "B": _G5_HC + " " + _G5_KDA + " " + _ROUTED_MOE,
        "C": _G5_HC + " " + _G5_MLA + " " + _ROUTED_MOE,
    },
    "ABBC",
)

# MiniMax-01 (MiniMax-Text-01): lightning (linear) attention on 7 of 8 layers (default
# full_attention_interval 8), softmax GQA on layer 7; the lightning state is
# key_length^2 x heads f32 per layer and sequence (4 heads x 32 here), no conv state.
_MM01_MOE = (
    "ffn_norm.weight:128 ffn_gate_inp.weight:128x4 ffn_gate_exps.weight:128x64x4 "
    "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4"
)
FAMILIES2["minimax-01"] = Family(
    "minimax-01",
    {
        "block_count": 8,
        **_DIMS,
        "feed_forward_length": 64,
        "attention.head_count_kv": 2,
        "attention.key_length": 32,
        "attention.value_length": 32,
        "rope.dimension_count": 32,
        "attention.layer_norm_rms_epsilon": 1e-06,
        "residual_scale": 1.0,
        "expert_count": 4,
        "expert_used_count": 2,
    },
    "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
    {
        "L": "attn_norm.weight:128 attn_norm_2.weight:128 attn_qkv.weight:128x384 "
        "attn_gate.weight:128x128 attn_output.weight:128x128 " + _MM01_MOE,
        "A": "attn_norm.weight:128 attn_q.weight:128x128 attn_k.weight:128x64 "
        "attn_v.weight:128x64 attn_output.weight:128x128 " + _MM01_MOE,
    },
    "LLLLLLLA",
)

# dots3note: MLA everywhere, full layers (0, 3: kv_lora 64 + rope 32, 4 heads, K row 96) with
# the DSA lightning indexer (types [1, 0, 0, 1], 2 heads x 64) and sliding-window layers with
# their own MLA geometry (kv_lora 32 + rope 32, K row 64: key_length_swa), head-wise output
# gate, dense lead + MoE. Memory: llama_kv_cache_dsa_iswa (DSA cache + indexer cache of the
# full layers, then the SWA cache).
_D3_COMMON = (
    "attn_norm.weight:128 attn_q_a_norm.weight:64 attn_k_norm.weight:32 "
    "attn_q_a.weight:128x64 attn_output.weight:128x128 attn_gate.weight:128x4 "
    "ffn_norm.weight:128"
)
_D3_FULL = (
    _D3_COMMON + " attn_kv_a_norm.weight:64 attn_q_b.weight:64x256 "
    "attn_kv_a_mqa.weight:128x96 attn_k_b.weight:32x64x4 attn_v_b.weight:64x32x4 " + _DSA_INDEXER
)
_D3_SWA = (
    _D3_COMMON + " attn_kv_a_norm.weight:32 attn_q_b.weight:64x192 "
    "attn_kv_a_mqa.weight:128x64 attn_k_b.weight:16x32x4 attn_v_b.weight:32x32x4"
)
FAMILIES2["dots3note"] = Family(
    "dots3note",
    {
        "block_count": 4,
        **_DIMS,
        "attention.head_count_kv": 1,
        "attention.key_length": 96,
        "attention.value_length": 64,
        "attention.key_length_swa": 64,
        "attention.value_length_swa": 32,
        "attention.key_length_mla": 64,
        "attention.value_length_mla": 32,
        "attention.key_length_mla_swa": 48,
        "attention.value_length_mla_swa": 32,
        "attention.q_lora_rank": 64,
        "attention.kv_lora_rank": 64,
        "attention.kv_lora_rank_swa": 32,
        "rope.dimension_count": 32,
        "attention.sliding_window": 128,
        "rope.freq_base_swa": 10000.0,
        "attention.sliding_window_pattern": [False, True, True, False],
        "attention.layer_norm_rms_epsilon": 1e-06,
        **_DS_MOE,
        **_INDEXER,
        "attention.indexer.types": [1, 0, 0, 1],
    },
    "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
    {"F": _D3_FULL + " " + _DENSE, "G": _D3_FULL + " " + _ROUTED_MOE, "S": _D3_SWA + " " + _ROUTED_MOE},
    "FSSG",
)

# hy_v4: MLA (kv_lora 64 + rope 32, K row 96) with attention sinks and a gated output, 4
# hyper-connection streams, and the DSA lightning indexer (2 heads x 64, top-k 256) on the
# "full" layers of attention.indexer.types [1, 0, 1] (layer 1 reuses layer 0's top-k).
_HY4_ATTN = (
    "attn_norm.weight:128 attn_sinks.weight:4 attn_q_a.weight:128x64 "
    "attn_q_a_norm.weight:64 attn_q_b.weight:64x256 attn_kv_a_mqa.weight:128x96 "
    "attn_kv_a_norm.weight:64 attn_k_b.weight:32x64x4 attn_v_b.weight:64x32x4 "
    "attn_output.weight:128x128 attn_gate.weight:128x128 hc_attn_fn.weight:512x8 "
    "hc_attn_base.weight:8 hc_attn_scale.weight:2 hc_ffn_fn.weight:512x8 "
    "hc_ffn_base.weight:8 hc_ffn_scale.weight:2 ffn_norm.weight:128"
)
_HY4_IDX = (
    "indexer.attn_q_b.weight:64x128 indexer.attn_k.weight:128x64 "
    "indexer.k_norm.weight:64 indexer.k_norm.bias:64 indexer.proj.weight:128x2"
)
FAMILIES2["hy_v4"] = Family(
    "hy_v4",
    {
        "block_count": 3,
        **_DIMS,
        "attention.head_count_kv": 1,
        **_MLA,
        "attention.layer_norm_rms_epsilon": 1e-06,
        **_DS_MOE,
        "hyper_connection.count": 4,
        "hyper_connection.epsilon": 1e-06,
        "hyper_connection.magnitude": 1.0,
        **_INDEXER,
        "attention.indexer.types": [1, 0, 1],
    },
    "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320 "
    "output_hc_fn.weight:512x4 output_hc_base.weight:4 output_hc_scale.weight:1",
    {
        "D": _HY4_ATTN + " " + _HY4_IDX + " " + _DENSE,
        "F": _HY4_ATTN + " " + _HY4_IDX + " " + _ROUTED_MOE,
        "S": _HY4_ATTN + " " + _ROUTED_MOE,
    },
    "DSF",
)

# Qwen3.5 MoE (Qwen3.6-35B-A3B's arch): gated delta-net layers (ssm_beta/ssm_alpha, not
# qwen3next's fused ssm_ba) and every 4th layer gated attention, routed + shared experts
# (src/models/qwen35moe.cpp load_arch_tensors).
_Q35_MOE = (
    "ffn_gate_inp.weight:128x4 ffn_down_exps.weight:64x128x4 ffn_gate_exps.weight:128x64x4 "
    "ffn_up_exps.weight:128x64x4 ffn_gate_inp_shexp.weight:128 ffn_gate_shexp.weight:128x64 "
    "ffn_up_shexp.weight:128x64 ffn_down_shexp.weight:64x128"
)
FAMILIES2["qwen35moe"] = Family(
    "qwen35moe",
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
        "rope.dimension_sections": [3, 3, 2, 0],
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
    "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
    {
        "A": "attn_qkv.weight:128x256 attn_gate.weight:128x128 attn_norm.weight:128 "
        "post_attention_norm.weight:128 ssm_conv1d.weight:4x256 ssm_dt.bias:4 ssm_a:4 "
        "ssm_beta.weight:128x4 ssm_alpha.weight:128x4 ssm_norm.weight:32 ssm_out.weight:128x128 " + _Q35_MOE,
        "B": "attn_norm.weight:128 post_attention_norm.weight:128 attn_q.weight:128x512 "
        "attn_k.weight:128x128 attn_v.weight:128x128 attn_output.weight:256x128 "
        "attn_q_norm.weight:64 attn_k_norm.weight:64 " + _Q35_MOE,
    },
    "AAAB",
)
