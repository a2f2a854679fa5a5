"""Synthetic Q4_0 llama GGUFs for the speed and memory benchmarks (gpu_bench, gpu_memory,
server_vs_llama, rpc_split) and the server tests: real shapes, random weights.

Speed does not depend on the values, so one pool of random blocks is sliced into every tensor
and an 8B file is written in seconds; the scales keep activations finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SHAPES: dict[str, dict[str, int]] = {
    "llama3-8b": dict(
        n_vocab=128256, n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_ctx_train=8192
    ),
    "tiny": dict(n_vocab=32000, n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=768, n_ctx_train=4096),
}
QK, BLOCK_BYTES = 32, 18  # Q4_0: 32 weights in an fp16 scale + 16 bytes of 4-bit values


def write_gguf(path: Path, shape: str, seed: int = 0) -> dict[str, Any]:
    """A llama GGUF of the given shape, all matrices Q4_0 with random 4-bit values and scales
    near 1/sqrt(n_embd)/4.6 (so activations stay finite), norms 1, an SPM vocabulary."""
    import gguf

    h = SHAPES[shape]
    e, v, ff = h["n_embd"], h["n_vocab"], h["n_ff"]
    kv = e // h["n_head"] * h["n_head_kv"]
    rng = np.random.default_rng(seed)
    pool_blocks = min(14_000_000, 4 * v * e // QK)
    pool = rng.integers(0, 256, size=(pool_blocks, BLOCK_BYTES), dtype=np.uint8)
    scales = rng.uniform(0.6, 1.4, size=pool_blocks) / (4.6 * np.sqrt(e))
    pool[:, :2] = scales.astype(np.float16).view(np.uint8).reshape(-1, 2)
    offset = [0]

    def q4_0(rows: int, cols: int) -> np.ndarray:
        n = rows * cols // QK
        if n > pool_blocks:
            return np.resize(pool, (n, BLOCK_BYTES)).reshape(rows, cols // QK * BLOCK_BYTES)
        start = offset[0] = (offset[0] + 7919 * 31) % (pool_blocks - n + 1)
        return pool[start : start + n].reshape(rows, cols // QK * BLOCK_BYTES)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"synthetic {shape} (random Q4_0 weights)")
    w.add_context_length(h["n_ctx_train"])
    w.add_embedding_length(e)
    w.add_block_count(h["n_layer"])
    w.add_feed_forward_length(ff)
    w.add_head_count(h["n_head"])
    w.add_head_count_kv(h["n_head_kv"])
    w.add_rope_dimension_count(e // h["n_head"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(v - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (v - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * v)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    q = gguf.GGMLQuantizationType.Q4_0
    ones = np.ones(e, dtype=np.float32)
    w.add_tensor("token_embd.weight", q4_0(v, e), raw_dtype=q)
    for i in range(h["n_layer"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name, rows, cols in (
            ("attn_q", e, e),
            ("attn_k", kv, e),
            ("attn_v", kv, e),
            ("attn_output", e, e),
            ("ffn_gate", ff, e),
            ("ffn_up", ff, e),
            ("ffn_down", e, ff),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", q4_0(rows, cols), raw_dtype=q)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", q4_0(v, e), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"shape": shape, **h, "type": "Q4_0", "size_bytes": path.stat().st_size}
