"""The model widths that size llama.cpp's compute graph (engine.plan.compute), built once per model.

Kept apart from the phase terms so that both the common model (compute.py) and the terms of
the exotic attentions (compute_sparse.py) can name it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Recurrent mixer phase: floats per token = a_unit × unit + a0; per sequence = c_s × n_embd_s
# + c_r × n_embd_r. "unit" is d_inner for SSMs, n_head × kda.head_dim for KDA, n_embd
# otherwise (fitted on the corpus).
REC_PHASE: dict[str, tuple[str, float, float, float, float]] = {
    "mamba": ("d_inner", 6.508, 0.0, 1.329, 0.249),
    "jamba": ("d_inner", 6.528, 0.0, 1.872, 0.351),
    "mamba2": ("d_inner", 9.281, 0.0, 1.266, 0.119),
    "granitehybrid": ("d_inner", 7.97, 0.0, 0.0, 0.0),
    "nemotron_h": ("d_inner", 8.06, 0.0, 1.558, 0.219),
    "nemotron_h_moe": ("d_inner", 8.06, 0.0, 1.558, 0.219),
    "falcon-h1": ("d_inner", 8.48, 0.0, 0.0, 0.0),
    "rwkv6": ("n_embd", 14.493, 0.1, 1.448, 0.045),
    "rwkv6qwen2": ("n_embd", 14.493, 0.1, 1.448, 0.045),
    "rwkv7": ("n_embd", 18.313, 0.1, 1.609, 0.050),
    "arwkv7": ("n_embd", 18.313, 0.1, 1.609, 0.050),
    "qwen3next": ("n_embd", 12.117, 0.0, 0.0, 0.0),
    # qwen35/qwen35moe build the same gated delta-net layer (llm_build_delta_net_base) as
    # qwen3next: on the corpus qwen35moe is within 0.03 MiB with these terms (was 18 % under
    # without a recurrent phase); the dense tiny MTP model (conv width = n_embd) is 0.1-0.7 over.
    "qwen35": ("n_embd", 12.117, 0.0, 0.0, 0.0),
    "qwen35moe": ("n_embd", 12.117, 0.0, 0.0, 0.0),
    "lfm2": ("n_embd", 9.0, 0.0, 0.0, 1.0),
    "lfm2moe": ("n_embd", 9.0, 0.0, 0.0, 1.0),
    # fused KDA (kimi-linear, "kda" = n_head × kda.head_dim): fitted on 128-512 wide fixtures
    # with 4-8 heads of 32-128 (kda 128 is Kimi-Linear-48B's), 1-8 sequences: within 0.45 MiB.
    "kimi-linear": ("kda", 6.6, 0.0, 2.05, 0.0),
}
# Extra floats per token × n_embd in the recurrent phase (hidden rows live around the mixer).


@dataclass(frozen=True)
class ComputeShape:
    """The model widths that size the compute graph (built once per model)."""

    arch: str
    n_embd: int
    n_vocab: int
    q_width: int  # widest n_head × head_k over attention layers (MLA: absorbed width)
    n_head: int  # most query heads over attention layers (KQ scores)
    has_full: bool  # some attention layer uses the full-context cache
    has_swa: bool  # some attention layer uses the sliding-window cache
    ffn_width: int  # widest FFN activation per token (dense n_ff or used experts × n_ff_exp)
    mla_rank: int
    rec_unit: int  # d_inner, n_head × kda.head_dim or n_embd, see REC_PHASE
    rec_state: tuple[int, int]  # (n_embd_s, n_embd_r) of one recurrent layer
    dsa_top_k: int = 0  # DSA lightning indexer's top-k (0: no indexer)
    ple_width: int = 0  # gemma3n per-layer inputs per token: 256 (n_embd_altup) × n_layer
    dsv4_ratio: int = 0  # deepseek4: smallest compression ratio in use (4 CSA, 128 HCA)
    hc_mult: int = 0  # deepseek4 hyper-connection streams (hidden rows per token)
    msa: tuple[int, int] = (0, 0)  # minimax-m3 sparse attention: (indexer heads, block size)
    # qwen4exp QSA: (indexer heads, indexer key length, smallest block ratio, hc streams)
    qsa: tuple[int, int, int, int] = (0, 0, 0, 0)
    kpool_rows: int = 0  # glm5-next: MLA K row + k-pool indexer row (elements per cell)
    la_heads: int = 0  # minimax-01 lightning attention: heads of its linear layers
    moe_used: int = 0  # experts used per token (0: dense FFN)
    gdn: tuple[int, int] = (0, 0)  # gated delta-net layers: (conv channels, d_inner)

    @classmethod
    def from_info(
        cls,
        info: Any,
        kv_layers: Sequence[int],
        head_k: Sequence[int],
        rec_layers: Sequence[int],
        n_embd_r: int,
        n_embd_s: int,
        n_ff: Sequence[int],
    ) -> ComputeShape:
        heads = info.n_head_per_layer
        mla = info.mla or {}
        sp = info.sparse or {}
        q = max((heads[il] * head_k[il] for il in kv_layers), default=0)
        swa = tuple(info.swa_layers)
        ffn = max(n_ff, default=0)
        if info.n_expert:
            ffn = info.n_expert_used * (info.n_ff_expert or ffn // max(1, info.n_expert_used))
        phase = REC_PHASE.get(info.architecture)
        unit = 0
        if rec_layers and phase:
            ssm = info.ssm or {}
            unit = {
                "d_inner": ssm.get("d_inner", 0),
                "n_embd": info.n_embd,
                "kda": heads[0] * ssm.get("kda_head_dim", 0),
            }[phase[0]]
        return cls(
            arch=info.architecture,
            n_embd=info.n_embd,
            n_vocab=info.n_vocab,
            q_width=q,
            n_head=max((heads[il] for il in kv_layers), default=0),
            has_full=any(not swa[il] for il in kv_layers),
            has_swa=any(swa[il] for il in kv_layers),
            ffn_width=ffn,
            mla_rank=mla.get("kv_lora_rank", 0) if info.mla else 0,
            rec_unit=unit,
            rec_state=(n_embd_s, n_embd_r) if rec_layers else (0, 0),
            dsa_top_k=(info.indexer or {}).get("top_k", 0)
            if sp.get("kind", "hc") == "hc" and info.architecture != "glm5-next"
            else 0,
            la_heads=heads[0] if info.architecture == "minimax-01" and rec_layers else 0,
            moe_used=info.n_expert_used if info.n_expert else 0,
            gdn=_gdn_widths(info) if rec_layers and info.architecture in GDN_ARCHS else (0, 0),
            kpool_rows=info.head_dim_k + (info.indexer or {}).get("cache_width", 0)
            if info.architecture == "glm5-next" and kv_layers
            else 0,
            ple_width=256 * (info.n_layer - info.n_layer_nextn) if info.architecture == "gemma3n" else 0,
            dsv4_ratio=min((x for x in sp.get("ratios", ()) if x), default=0)
            if sp.get("kind") == "dsv4"
            else 0,
            hc_mult=sp.get("hc_mult", 0) if sp.get("kind") in ("dsv4", "hc") else 0,
            qsa=_qsa_shape(info, kv_layers) if sp.get("kind") == "qsa" else (0, 0, 0, 0),
            msa=(sp["indexer_head_count"], sp["block_size"]) if sp.get("kind") == "msa" else (0, 0),
        )


#: Archs whose recurrent layers are llm_build_delta_net_base's gated delta-net.
GDN_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe"})


def _gdn_widths(info: Any) -> tuple[int, int]:
    """(conv channels, d_inner) of a gated delta-net layer: the conv runs over Q, K and V
    (2 × d_state × n_group + d_inner, src/models/qwen35.cpp build_layer_attn_linear)."""
    ssm = info.ssm or {}
    d_inner = ssm.get("d_inner", 0)
    return d_inner + 2 * ssm.get("n_group", 0) * ssm.get("d_state", 0), d_inner


def _qsa_shape(info: Any, kv_layers: Sequence[int]) -> tuple[int, int, int, int]:
    idx, sp = info.indexer or {}, info.sparse
    ratio = min((sp["ratios"][il] for il in kv_layers if sp["ratios"][il]), default=0)
    return (idx.get("head_count", 0) if ratio else 0, idx.get("key_length", 0), ratio, sp["hc_mult"])
