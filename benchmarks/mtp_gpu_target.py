"""The target of benchmarks/mtp_gpu.py: a synthetic ``qwen35`` with one MTP head, in three shapes.

Random weights: each distinct tensor shape is quantised to Q8_0 once from a small random block and
tiled, so even the 8B shape (8.9 GB) is written in seconds; only the costs matter. This module
imports nothing heavy at the top: mtp_gpu.py's measuring process must import llama_cpp before
numpy (see its docstring), and it imports this module first.
"""

from __future__ import annotations

import os

#: The target's shape: (width, query heads, KV heads, head size, FFN, trunk layers, words), its
#: delta-net sizes and its rope. "8b" is the Qwen3.5-9B shape; "mid" a 3B-class fallback if that
#: cannot be loaded; "tiny" a rehearsal of the whole script on a CPU in seconds.
SHAPES = {
    "8b": (
        (4096, 16, 4, 256, 12288, 32, 151000),
        {"conv_kernel": 4, "state_size": 128, "group_count": 16, "time_step_rank": 32, "inner_size": 4096},
        (64, [11, 11, 10, 0]),
    ),
    "mid": (
        (2048, 8, 4, 256, 6144, 24, 151000),
        {"conv_kernel": 4, "state_size": 128, "group_count": 8, "time_step_rank": 16, "inner_size": 2048},
        (64, [11, 11, 10, 0]),
    ),
    "tiny": (
        (256, 4, 2, 64, 512, 4, 600),
        {"conv_kernel": 4, "state_size": 32, "group_count": 2, "time_step_rank": 4, "inner_size": 128},
        (16, [3, 3, 2, 0]),
    ),
}
INTERVAL = 4


def write_target(path: str, shape: str, words: int | None, layers: int | None) -> str:
    """Write the target of ``shape`` (``words`` / ``layers`` override its vocabulary / trunk);
    returns its description."""
    import gguf
    import numpy as np

    (E, H, HKV, D, FF, N_TRUNK, N_WORDS), SSM, (ROPE_DIMS, SECTIONS) = SHAPES[shape]
    N_WORDS, N_TRUNK = words or N_WORDS, layers or N_TRUNK
    what = (
        f"qwen35 {E} wide, {N_TRUNK} layers (every {INTERVAL}th attention), {FF} FFN, "
        f"vocab {N_WORDS + 259}, Q8_0 + 1 MTP head, random weights"
    )
    if os.path.exists(path):
        return what

    Q8 = gguf.GGMLQuantizationType.Q8_0
    rng = np.random.default_rng(0)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def q8(ne0: int, ne1: int) -> np.ndarray:
        if (ne0, ne1) not in cache:
            block = (rng.standard_normal((64, ne0)) * 0.02).astype(np.float32)
            qb = gguf.quants.quantize(block, Q8)
            reps = -(-ne1 // 64)
            cache[(ne0, ne1)] = np.ascontiguousarray(np.tile(qb, (reps, 1))[:ne1])
        return cache[(ne0, ne1)]

    a = "qwen35"
    w = gguf.GGUFWriter(path, a)
    w.add_string("general.name", "synthetic-qwen35-9b-mtp1")
    for k, v in (
        ("context_length", 8192),
        ("embedding_length", E),
        ("block_count", N_TRUNK + 1),
        ("feed_forward_length", FF),
        ("attention.head_count", H),
        ("attention.head_count_kv", HKV),
        ("attention.key_length", D),
        ("attention.value_length", D),
        ("rope.dimension_count", ROPE_DIMS),
        ("full_attention_interval", INTERVAL),
        ("nextn_predict_layers", 1),
    ):
        w.add_uint32(f"{a}.{k}", v)
    for k, v in SSM.items():
        w.add_uint32(f"{a}.ssm.{k}", v)
    w.add_array(f"{a}.rope.dimension_sections", SECTIONS)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 10000000.0)
    tokens = (
        ["<unk>", "<s>", "</s>"]
        + [f"<0x{b:02X}>" for b in range(256)]
        + [f"\u2581w{i}" for i in range(N_WORDS)]
    )
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", [0.0] * len(tokens))
    w.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * N_WORDS)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    V = len(tokens)
    ones = np.ones(E, np.float32)

    def vec(name: str, n: int, value: float = 1.0) -> None:
        w.add_tensor(name, np.full(n, value, np.float32))

    def mat(name: str, ne0: int, ne1: int) -> None:
        w.add_tensor(name, q8(ne0, ne1), raw_dtype=Q8)

    key_dim = SSM["state_size"] * SSM["group_count"]
    value_dim = SSM["state_size"] * SSM["time_step_rank"]
    dt_rank, d_conv = SSM["time_step_rank"], SSM["conv_kernel"]
    conv = (rng.standard_normal((key_dim * 2 + value_dim, d_conv)) * 0.1).astype(np.float32)
    mat("token_embd.weight", E, V)
    w.add_tensor("output_norm.weight", ones)
    mat("output.weight", E, V)
    for i in range(N_TRUNK + 1):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones)
        if i < N_TRUNK and (i + 1) % INTERVAL != 0:  # gated delta-net
            mat(f"blk.{i}.attn_qkv.weight", E, key_dim * 2 + value_dim)
            mat(f"blk.{i}.attn_gate.weight", E, value_dim)
            w.add_tensor(f"blk.{i}.ssm_conv1d.weight", conv)
            vec(f"blk.{i}.ssm_dt.bias", dt_rank, 0.0)
            vec(f"blk.{i}.ssm_a", dt_rank, -1.0)
            mat(f"blk.{i}.ssm_beta.weight", E, dt_rank)
            mat(f"blk.{i}.ssm_alpha.weight", E, dt_rank)
            vec(f"blk.{i}.ssm_norm.weight", SSM["state_size"])
            mat(f"blk.{i}.ssm_out.weight", value_dim, E)
        else:  # gated attention (the MTP block is one too)
            mat(f"blk.{i}.attn_q.weight", E, D * H * 2)
            mat(f"blk.{i}.attn_k.weight", E, D * HKV)
            mat(f"blk.{i}.attn_v.weight", E, D * HKV)
            mat(f"blk.{i}.attn_output.weight", D * H, E)
            vec(f"blk.{i}.attn_q_norm.weight", D)
            vec(f"blk.{i}.attn_k_norm.weight", D)
        mat(f"blk.{i}.ffn_gate.weight", E, FF)
        mat(f"blk.{i}.ffn_up.weight", E, FF)
        mat(f"blk.{i}.ffn_down.weight", FF, E)
        if i >= N_TRUNK:
            mat(f"blk.{i}.nextn.eh_proj.weight", 2 * E, E)
            for n in ("enorm", "hnorm", "shared_head_norm"):
                w.add_tensor(f"blk.{i}.nextn.{n}.weight", ones)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return what
