"""More synthetic families for tests/gguf_factory.py (merged into its FAMILIES).

Kept apart so the fixture file stays readable: gpt-oss (sliding window every other layer,
attention sinks, biased MoE), deepseek4, minimax-m3 and the hybrid-indexer archs. Tensor lists
are read from each arch's `load_arch_tensors` in llama.cpp 0c1e570 (src/models/*.cpp). Imported
by gguf_factory after its own definitions (import gguf_factory, not this module).
"""
from __future__ import annotations

from gguf_factory import Family

_ATTN_128 = ("attn_norm.weight:128 attn_q.weight:128x256 attn_k.weight:128x128 "
             "attn_v.weight:128x128 attn_output.weight:256x128")

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
}
