"""Estimate llama.cpp's compute buffer (notes §9), which has no closed form.

ggml-alloc plans tensor lifetimes over the worst-case graph (n_ubatch tokens, n_seq_max
sequences), so the buffer is the peak of live tensors over the graph. The peak sits in one of a
few phases, each dominated by a handful of tensors; we take the maximum of:

* output:    logits `n_vocab × n_outputs` + two hidden-state rows per output token,
* attention: the KQ masks (inputs, f16 with flash attention, f32 without) + without flash
             attention the f32 scores `n_kv × T × n_head` + a few hidden-width rows per token,
* FFN:       gate/up/activation rows (`4 × n_ff` per token, experts: `n_expert_used × n_ff_exp`),
* recurrent: per-token scan temporaries + per-sequence state copies.

The per-token coefficients were fitted on the CPU backend against `~llama_context: compute
buffer size is …` for the synthetic corpus (tests/helpers/gguf_factory.py) and checked on SmolLM2-135M and
Gemma-3-270M: dense/MoE/SWA/MLA transformers are exact to a few KiB except for allocator
fragmentation worth up to one `n_ubatch × n_embd` f32 row (split as a half-row hedge), recurrent
mixers are within a few percent. On CUDA (checked with the corpus on an H100) the GPU buffer is
this estimate less one hidden row per token (the input embeddings are gathered on the host) and
the host buffer holds the masks plus 2-4 hidden rows per token, within ~1.5 MiB at full offload.
Not modelled: weight copies that op_offload streams into the GPU buffer for CPU-resident layers,
and ops that fall back to the CPU (e.g. flash attention for head sizes CUDA has no kernel for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.core.memory_types import MiB
from engine.plan import compute_sparse as cs
from engine.plan.compute_shape import REC_PHASE, ComputeShape

if TYPE_CHECKING:
    from engine.plan.context import Resolved

_REC_EMBD = {"kimi-linear": 3.3}
# 1.0: the KQ masks are still live during the recurrent phase (attention layers come after).
_REC_MASK = {
    "qwen3next": 1.0,
    "qwen35": 1.0,
    "qwen35moe": 1.0,
    "jamba": 1.0,
    "granitehybrid": 1.0,
    "nemotron_h": 1.0,
    "nemotron_h_moe": 1.0,
    "falcon-h1": 1.0,
    "kimi-linear": 1.0,
}
# Gated delta-net layers: the fitted phase above (a × n_embd) holds where the conv width is
# 2 × n_embd, as in the corpus; across widths the layer's peak is not linear in one width
# (ggml-alloc reuses blocks of different sizes), so it is also bounded by floats per token
# a × conv channels + b × n_embd + c × d_inner, fitted with none under on 160 CPU dry runs
# (E 128/256, d_state 32/64, n_group × dt_rank 2×4 … 8×16; ubatch 256-1024; 1-3 seqs): the
# compute buffer is never under, 17 % over on average, at most 68 % (was up to 35 % under).
_GDN_BOUND = {"qwen3next": (2.98, 4.75, 1.5), "qwen35": (2.96, 6.25, 0.0), "qwen35moe": (2.96, 6.25, 0.0)}
# Extra per-token floats (× n_embd) in the attention phase without flash attention.
_ATTN_OFF_EXTRA = {
    "gemma2": 2.0,
    "gemma3": 2.0,
    "gemma3n": 2.0,
    "gemma4": 2.0,
    "qwen3next": 3.06,
    "qwen35": 3.06,
    "qwen35moe": 3.06,
    "deepseek2": 0.06,
}


def phases(
    shape: ComputeShape, r: Resolved, fa_on: bool, n_swa_cells: int, kv_unified: bool, quant_kv: bool = False
) -> dict[str, int]:
    """Peak bytes of each graph phase for the worst-case reserve (n_ubatch, n_seq_max)."""
    e = shape.n_embd
    t0 = min(r.n_ctx, r.n_ubatch)
    t = -(-t0 // r.n_seq) * r.n_seq  # graph_reserve rounds tokens up to whole sequences
    t_out = min(t0, r.n_outputs_max)
    out = 4 * t_out * (shape.n_vocab + 2 * e) + 4 * t * 3
    if shape.q_width and (not fa_on or quant_kv):
        out += 2 * t * e  # fragmentation seen without FA / with quantized K/V: 0 to 4·T·n_embd
    result = {"output": out}
    mask = 0  # the KQ masks are graph inputs: live from the first to the last attention layer
    if shape.q_width:
        cell = 2 if fa_on else 4
        mask = (r.n_ctx_seq * t * cell if shape.has_full else 0) + (
            n_swa_cells * t * cell if shape.has_swa else 0
        )
        n_kv = r.n_ctx_seq if shape.has_full else n_swa_cells
        if shape.kpool_rows:
            result["attention"] = cs.glm5_next_attention(shape, r, t, fa_on)
        elif shape.qsa[0]:
            result["attention"] = mask + cs.qsa_attention(shape, r, t, fa_on)
        elif fa_on:
            per_tok = e + 3 * shape.q_width + 7 + 2 * shape.mla_rank
            result["attention"] = mask + 4 * t * per_tok
        else:
            per_tok = 3 * e + 3 * shape.q_width + 5 + _ATTN_OFF_EXTRA.get(shape.arch, 0.0) * e
            v_t = shape.mla_rank * n_kv * r.n_stream  # MLA: half of a transposed V copy (f16)
            result["attention"] = int(mask + 4 * n_kv * t * shape.n_head + 4 * t * per_tok + v_t)
        if shape.dsa_top_k:
            result["attention"] += cs.dsa_extra(shape, r, t, fa_on)
            if shape.hc_mult and not shape.dsv4_ratio:  # hy_v4's hyper-connection streams
                result["attention"] += int(
                    4 * t * shape.hc_mult * e * (1.0 if fa_on else 1.8)
                    + (t * r.n_ctx_seq // 6 if fa_on else 0)
                )
        if shape.dsv4_ratio:
            result["attention"] += cs.dsv4_extra(shape, r, t, fa_on, n_swa_cells)
        if shape.msa[0] and fa_on and (r.n_seq == 1 or not kv_unified):
            result["attention"] += cs.msa_extra(shape, r, t)
    if shape.la_heads:
        cs.add_lightning(result, shape, t, r.n_seq, mask, fa_on)
    if shape.ffn_width:
        result["ffn"] = mask + 4 * t * (e + 4 * shape.ffn_width + 7)
    if shape.ple_width:
        cs.add_per_layer_inputs(result, shape, t, mask, fa_on, shape.has_swa and n_swa_cells >= r.n_ctx_seq)
    phase = REC_PHASE.get(shape.arch)
    if phase and shape.rec_unit:
        _unit, a, a0, c_s, c_r = phase
        s, rr = shape.rec_state
        result["recurrent"] = int(
            mask * _REC_MASK.get(shape.arch, 0)
            + 4 * t * (a * shape.rec_unit + a0 + _REC_EMBD.get(shape.arch, 0.0) * e)
            + 4 * r.n_seq * (c_s * s + c_r * rr)
        )
        if shape.gdn[0]:
            a, b, c = _GDN_BOUND[shape.arch]
            bound = mask + 4 * t * (a * shape.gdn[0] + b * e + c * shape.gdn[1])
            result["recurrent"] = max(result["recurrent"], int(bound))
    return result


def estimate_compute(
    shape: ComputeShape,
    r: Resolved,
    fa_on: bool,
    n_swa_cells: int,
    kv_unified: bool,
    out_dev: str,
    has_gpu: bool,
    quant_kv: bool = False,
) -> list[tuple[str, int, str]]:
    """[(device, bytes, detail)]: the CPU buffer, or a GPU buffer plus the host's inputs."""
    # The quantized-K/V fragmentation is a CPU allocator effect (an H100 showed none at
    # q8_0/32k). CUDA loads are re-sized by engine.plan.compute_placement; the GPU branch
    # below stays for other GPU backends.
    ph = phases(shape, r, fa_on, n_swa_cells, kv_unified, quant_kv and not has_gpu)
    name, peak = max(ph.items(), key=lambda kv: kv[1])
    t = min(r.n_ctx, r.n_ubatch)
    detail = (
        f"estimate: peak in the {name} phase ({peak / MiB:.2f} MiB; "
        + ", ".join(f"{k} {v / MiB:.2f}" for k, v in ph.items() if k != name)
        + f" MiB) for a {t}-token ubatch × {r.n_seq} seqs"
    )
    if not has_gpu:
        return [("CPU", peak, detail)]
    # On CUDA (checked on an H100 with the corpus, ±1.5 MiB / ~6 %): the input embeddings are
    # gathered on the host (token_embd lives there), so the GPU graph lacks one hidden row per
    # token, and the host buffer holds the KQ masks plus two hidden rows per token.
    dev = out_dev if out_dev != "CPU" else "CUDA0"
    row = 4 * t * shape.n_embd
    # two hidden rows per token; without flash attention two and a half (8B shape on an
    # H100, ctx 8192: 36.0 MiB = f32 masks 16 + 2.5 rows of 8 MiB)
    host = (2 * row if fa_on or not shape.q_width else 5 * row // 2) + 4 * t * 8
    if shape.q_width:
        cell = 2 if fa_on else 4
        host += cell * t * (r.n_ctx_seq * shape.has_full + n_swa_cells * shape.has_swa)
    return [
        (dev, max(peak - row, row), detail + " (GPU: CPU calibration less the host-side input rows)"),
        ("CPU", host, "host compute: KQ masks + input embedding rows"),
    ]
