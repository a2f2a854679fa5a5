"""More synthetic families for tests/gguf_factory.py (merged into its FAMILIES).

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


_ATTN_128 = ("attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
             "attn_v.weight:128x128 attn_output.weight:256x128")

_MOE = ("ffn_norm.weight:128 ffn_gate_inp.weight:128x4 ffn_gate_exps.weight:128x64x4 "
        "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
        "ffn_gate_shexp.weight:128x64 ffn_down_shexp.weight:64x128 ffn_up_shexp.weight:128x64")
# DeepSeek V4: one 64-wide K head per layer (MLA-like, K only), 4 query heads, q_lora 64,
# grouped low-rank output (2 groups x 32), 4 hyper-connection streams (hc_dim 512, mix 24),
# sinks; per-layer compression ratio 0 (window only), 4 (CSA + lightning indexer, 2 heads x
# 64) or 128 (HCA).
_DSV4_ATTN = ("attn_norm.weight:128 attn_sinks.weight:4 attn_q_a.weight:128x64 "
              "attn_q_a_norm.weight:64 attn_q_b.weight:64x256 attn_kv.weight:128x64 "
              "attn_kv_a_norm.weight:64 attn_output_a.weight:128x64 attn_output_b.weight:64x128 "
              "hc_attn_fn.weight:512x24 hc_attn_base.weight:24 hc_attn_scale.weight:3 "
              "hc_ffn_fn.weight:512x24 hc_ffn_base.weight:24 hc_ffn_scale.weight:3 "
              "exp_probs_b.bias:4 " + _MOE)
_DSV4_CSA = ("attn_compressor_kv.weight:128x128 attn_compressor_gate.weight:128x128 "
             "attn_compressor_ape.weight:128x4 attn_compressor_norm.weight:64 "
             "indexer.proj.weight:128x2 indexer.attn_q_b.weight:64x128 "
             "indexer_compressor_kv.weight:128x128 indexer_compressor_gate.weight:128x128 "
             "indexer_compressor_ape.weight:128x4 indexer_compressor_norm.weight:64")
_DSV4_HCA = ("attn_compressor_kv.weight:128x64 attn_compressor_gate.weight:128x64 "
             "attn_compressor_ape.weight:64x128 attn_compressor_norm.weight:64")

FAMILIES2: dict[str, Family] = {
    # GPT-OSS: SWA on even layers (period 2), attention sinks per head, biased q/k/v/o and a
    # biased SwiGLU-OAI MoE (softmax-weighted, no shared expert).
    "gpt-oss": Family(
        "gpt-oss", {"block_count": 4, "context_length": 4096, "embedding_length": 128,
         "feed_forward_length": 256, "attention.head_count": 4, "attention.head_count_kv": 2,
         "attention.key_length": 64, "attention.value_length": 64, "rope.dimension_count": 64,
         "attention.sliding_window": 128, "attention.layer_norm_rms_epsilon": 1e-05,
         "rope.freq_base": 150000.0, "expert_count": 4, "expert_used_count": 2,
         "expert_feed_forward_length": 64},
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _ATTN_128 + " attn_q.bias:256 attn_k.bias:128 attn_v.bias:128 "
                 "attn_output.bias:128 post_attention_norm.weight:128 attn_sinks.weight:4 "
                 "ffn_gate_inp.weight:128x4 ffn_gate_inp.bias:4 ffn_gate_exps.weight:128x64x4 "
                 "ffn_down_exps.weight:64x128x4 ffn_up_exps.weight:128x64x4 "
                 "ffn_gate_exps.bias:64x4 ffn_down_exps.bias:128x4 ffn_up_exps.bias:64x4",
        }, "AAAA"),
    "deepseek4": Family(
        "deepseek4", {"block_count": 4, "context_length": 4096, "embedding_length": 128,
         "feed_forward_length": 256, "attention.head_count": 4, "attention.head_count_kv": 1,
         "attention.key_length": 64, "attention.value_length": 64, "rope.dimension_count": 32,
         "attention.q_lora_rank": 64, "attention.sliding_window": 128,
         "attention.layer_norm_rms_epsilon": 1e-06, "expert_count": 4, "expert_used_count": 2,
         "expert_feed_forward_length": 64, "expert_shared_count": 1,
         "expert_weights_scale": 1.5, "expert_weights_norm": True, "expert_gating_func": 4,
         "swiglu_clamp_exp": 10.0, "attention.indexer.head_count": 2,
         "attention.indexer.key_length": 64, "attention.indexer.top_k": 256,
         "attention.output_group_count": 2, "attention.output_lora_rank": 32,
         "attention.compress_rope_freq_base": 160000.0, "hyper_connection.count": 4,
         "hyper_connection.sinkhorn_iterations": 20, "hyper_connection.epsilon": 1e-06,
         "hash_layer_count": 0, "attention.compress_ratios": [0, 4, 128, 4]},
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320 "
        "output_hc_fn.weight:512x4 output_hc_base.weight:4 output_hc_scale.weight:1",
        {"A": _DSV4_ATTN, "B": _DSV4_ATTN + " " + _DSV4_CSA, "C": _DSV4_ATTN + " " + _DSV4_HCA},
        "ABCB"),
    # MiniMax-M3: GQA with per-head QK-norm and partial rotary (32 of 64), one dense lead layer,
    # then sigmoid-routed MoE + shared expert and the MSA indexer (2 heads x 128; top 4 blocks
    # of 64 tokens, 1 local block); indexer keys 128 wide, twice the
    # head size, so the indexer cache's K (128) and V (64, the head size) differ.
    "minimax-m3": Family(
        "minimax-m3", {"block_count": 3, "context_length": 4096, "embedding_length": 128,
         "feed_forward_length": 256, "attention.head_count": 4, "attention.head_count_kv": 2,
         "attention.key_length": 64, "attention.value_length": 64, "rope.dimension_count": 32,
         "attention.layer_norm_rms_epsilon": 1e-06, "leading_dense_block_count": 1,
         "expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 64,
         "expert_shared_count": 1, "expert_weights_scale": 2.0, "expert_weights_norm": True,
         "expert_gating_func": 2, "attention.indexer.head_count": 2,
         "attention.indexer.key_length": 128, "attention.indexer.top_k": 4,
         "attention.indexer.block_size": 64, "attention.indexer.local_blocks": 1},
        "token_embd.weight:128x320 output_norm.weight:128 output.weight:128x320",
        {
            "A": _ATTN_128 + " attn_q_norm.weight:64 attn_k_norm.weight:64 "
                 "ffn_norm.weight:128 ffn_gate.weight:128x256 ffn_down.weight:256x128 "
                 "ffn_up.weight:128x256",
            "B": _ATTN_128 + " attn_q_norm.weight:64 attn_k_norm.weight:64 exp_probs_b.bias:4 "
                 + _MOE + " indexer.q_proj.weight:128x256 indexer.k_proj.weight:128x128 "
                 "indexer.q_norm.weight:128 indexer.k_norm.weight:128",
        }, "ABB"),
}
