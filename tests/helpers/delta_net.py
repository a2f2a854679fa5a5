"""Gated delta-net hybrids (qwen3next, qwen35moe) of any width: three delta-net layers and one
gated attention layer with routed + shared experts, tensors as src/models/qwen3next.cpp and
qwen35moe.cpp create them (qwen3next fuses beta/alpha into ssm_ba). The corpus families have
one width (conv = 2 × n_embd); these vary the conv, key and value widths independently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.gguf_factory import FAMILIES, write_gguf


def write_delta_net(
    path: str | Path, arch: str, n_embd: int, d_state: int, n_group: int, dt_rank: int, n_ff_exp: int = 64
) -> Path:
    e, f = n_embd, n_ff_exp
    kd, vd = d_state * n_group, d_state * dt_rank
    conv = 2 * kd + vd
    kv: dict[str, Any] = {  # the corpus's qwen3next, at these widths
        **FAMILIES["qwen3next"].kv,
        "embedding_length": e,
        "ssm.inner_size": vd,
        "ssm.state_size": d_state,
        "ssm.time_step_rank": dt_rank,
        "ssm.group_count": n_group,
        "expert_feed_forward_length": f,
        "expert_shared_feed_forward_length": f,
    }
    if arch == "qwen35moe":
        kv["rope.dimension_sections"] = [3, 3, 2, 0]
    moe = [
        ("ffn_gate_inp.weight", (e, 4)),
        ("ffn_down_exps.weight", (f, e, 4)),
        ("ffn_gate_exps.weight", (e, f, 4)),
        ("ffn_up_exps.weight", (e, f, 4)),
        ("ffn_gate_inp_shexp.weight", (e,)),
        ("ffn_gate_shexp.weight", (e, f)),
        ("ffn_up_shexp.weight", (e, f)),
        ("ffn_down_shexp.weight", (f, e)),
    ]
    ba = [("ssm_beta.weight", (e, dt_rank)), ("ssm_alpha.weight", (e, dt_rank))]
    linear = [
        ("attn_qkv.weight", (e, conv)),
        ("attn_gate.weight", (e, vd)),
        ("ssm_conv1d.weight", (4, conv)),
        ("ssm_dt.bias", (dt_rank,)),
        ("ssm_a", (dt_rank,)),
        ("ssm_norm.weight", (d_state,)),
        ("ssm_out.weight", (vd, e)),
        *(ba if arch == "qwen35moe" else [("ssm_ba.weight", (e, 2 * dt_rank))]),
    ]
    attention = [
        ("attn_q.weight", (e, 512)),
        ("attn_k.weight", (e, 128)),
        ("attn_v.weight", (e, 128)),
        ("attn_output.weight", (256, e)),
        ("attn_q_norm.weight", (64,)),
        ("attn_k_norm.weight", (64,)),
    ]
    tensors: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (e, 320)),
        ("output_norm.weight", (e,)),
        ("output.weight", (e, 320)),
    ]
    for il in range(4):
        norms = [("attn_norm.weight", (e,)), ("post_attention_norm.weight", (e,))]
        tensors += [(f"blk.{il}.{n}", s) for n, s in norms + (linear if il < 3 else attention) + moe]
    return write_gguf(path, arch, kv, tensors)
