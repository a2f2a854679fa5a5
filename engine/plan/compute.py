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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.core.memory_types import MiB

if TYPE_CHECKING:
    from engine.plan.context import Resolved

# Recurrent mixer phase: floats per token = a_unit × unit + a0; per sequence = c_s × n_embd_s
# + c_r × n_embd_r. "unit" is d_inner for SSMs, n_head × kda.head_dim for KDA, n_embd
# otherwise (fitted on the corpus).
_REC_PHASE: dict[str, tuple[str, float, float, float, float]] = {
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
    "lfm2": ("n_embd", 9.0, 0.0, 0.0, 1.0),
    "lfm2moe": ("n_embd", 9.0, 0.0, 0.0, 1.0),
    # fused KDA (kimi-linear, "kda" = n_head × kda.head_dim): fitted on 128-512 wide fixtures
    # with 4-8 heads of 32-128 (kda 128 is Kimi-Linear-48B's), 1-8 sequences: within 0.45 MiB.
    "kimi-linear": ("kda", 6.6, 0.0, 2.05, 0.0),
}
# Extra floats per token × n_embd in the recurrent phase (hidden rows live around the mixer).
_REC_EMBD = {"kimi-linear": 3.3}
# 1.0: the KQ masks are still live during the recurrent phase (attention layers come after).
_REC_MASK = {
    "qwen3next": 1.0,
    "jamba": 1.0,
    "granitehybrid": 1.0,
    "nemotron_h": 1.0,
    "nemotron_h_moe": 1.0,
    "falcon-h1": 1.0,
    "kimi-linear": 1.0,
}
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
    rec_unit: int  # d_inner, n_head × kda.head_dim or n_embd, see _REC_PHASE
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
        phase = _REC_PHASE.get(info.architecture)
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
            result["attention"] = _glm5_next_attention(shape, r, t, fa_on)
        elif shape.qsa[0]:
            result["attention"] = mask + _qsa_attention(shape, r, t, fa_on)
        elif fa_on:
            per_tok = e + 3 * shape.q_width + 7 + 2 * shape.mla_rank
            result["attention"] = mask + 4 * t * per_tok
        else:
            per_tok = 3 * e + 3 * shape.q_width + 5 + _ATTN_OFF_EXTRA.get(shape.arch, 0.0) * e
            v_t = shape.mla_rank * n_kv * r.n_stream  # MLA: half of a transposed V copy (f16)
            result["attention"] = int(mask + 4 * n_kv * t * shape.n_head + 4 * t * per_tok + v_t)
        if shape.dsa_top_k:
            result["attention"] += _dsa_extra(shape, r, t, fa_on)
            if shape.hc_mult and not shape.dsv4_ratio:  # hy_v4's hyper-connection streams
                result["attention"] += int(
                    4 * t * shape.hc_mult * e * (1.0 if fa_on else 1.8)
                    + (t * r.n_ctx_seq // 6 if fa_on else 0)
                )
        if shape.dsv4_ratio:
            result["attention"] += _dsv4_extra(shape, r, t, fa_on, n_swa_cells)
        if shape.msa[0] and fa_on and (r.n_seq == 1 or not kv_unified):
            result["attention"] += _msa_extra(shape, r, t)
    if shape.la_heads:
        _add_lightning(result, shape, t, r.n_seq, mask, fa_on)
    if shape.ffn_width:
        result["ffn"] = mask + 4 * t * (e + 4 * shape.ffn_width + 7)
    if shape.ple_width:
        _add_per_layer_inputs(result, shape, t, mask, fa_on, shape.has_swa and n_swa_cells >= r.n_ctx_seq)
    phase = _REC_PHASE.get(shape.arch)
    if phase and shape.rec_unit:
        _unit, a, a0, c_s, c_r = phase
        s, rr = shape.rec_state
        result["recurrent"] = int(
            mask * _REC_MASK.get(shape.arch, 0)
            + 4 * t * (a * shape.rec_unit + a0 + _REC_EMBD.get(shape.arch, 0.0) * e)
            + 4 * r.n_seq * (c_s * s + c_r * rr)
        )
    return result


def _qsa_shape(info: Any, kv_layers: Sequence[int]) -> tuple[int, int, int, int]:
    idx, sp = info.indexer or {}, info.sparse
    ratio = min((sp["ratios"][il] for il in kv_layers if sp["ratios"][il]), default=0)
    return (idx.get("head_count", 0) if ratio else 0, idx.get("key_length", 0), ratio, sp["hc_mult"])


def _qsa_attention(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
    """qwen4exp's attention phase with QSA (besides the KQ masks), whose peak is the indexer
    scoring every cell: per cell and token the block scores expanded to cells (f32), the mask
    in f32 added to them (a cast with flash attention) and the per-block score rows (4 bytes
    per block); without flash attention also the f32 KQ scores of every head. Per token: the
    hc hyper-connection streams (two rows each), the indexer queries (4 rows per head with
    flash attention, 2 without), the q|gate projection (once, twice without flash attention)
    and most of a hidden row. Fitted on the CPU backend (ratios 4-16, indexer heads 2-4, hc
    2-4, 1k-4k cells, 128-512 tokens, 1-2 sequences, unified or not): within 1 MiB / 12 %,
    under rather than over; on the test grid within 0.56 MiB."""
    e = shape.n_embd
    heads, idx_dim, ratio, hc = shape.qsa
    cells = r.n_ctx_seq
    per_cell = 8 + 4 / ratio + (0 if fa_on else 4 * shape.n_head)
    per_tok = (
        2 * hc * e
        + (4 if fa_on else 2) * heads * idx_dim
        + (2 if fa_on else 4) * shape.q_width
        + (0.8 if fa_on else 0.75) * e
    )
    return int(t * cells * per_cell + 4 * t * per_tok)


def _add_lightning(
    result: dict[str, int], shape: ComputeShape, t: int, n_seq: int, mask: int, fa_on: bool
) -> None:
    """minimax-01's lightning-attention layers work on [tokens per sequence]² × heads f32
    blocks per sequence (`L` bytes): the diag-decay graph input, its decayed copy and the
    masked QK product are live at once (3 L), next to the KQ masks and about 8 hidden rows
    per token. The decay input stays allocated into the softmax layers, where it costs what
    the freed per-token rows do not cover (without flash attention: L less ~4 rows per
    token). Fitted on the CPU backend (4 and 8 heads, 1k-4k cells, 128-512 tokens, 1-4
    sequences): within 0.3 MiB / 2 % of the reserve llama.cpp sizes in a dry run (its first
    pp graph; the extra n_seqs = 1 reserve of §9 is not in the dry run either)."""
    e = shape.n_embd
    per_seq = t // n_seq
    la = 4 * shape.la_heads * per_seq * per_seq * n_seq
    result["lightning"] = 3 * la + mask + int(4 * t * 8.16 * e)
    if not fa_on and "attention" in result:
        result["attention"] += max(0, la - int(4 * t * 3.92 * e))


def _glm5_next_attention(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
    """glm5-next, ROUGH (a fit, not a model of its graph): the larger of two peaks fitted on
    one CPU fixture (n_embd 128, 4 mHC streams, MLA row 64 + k-pool indexer row 192,
    1k-8k cells, 64-512 tokens, 1-4 sequences): one growing with sequences × cells (per
    sequence, f32 rows of both cached keys with flash attention, about half without) and the
    indexer/mask peak growing with cells × tokens. Per-token terms are scaled by n_embd from
    that one width. Within 2.5 MiB / 30 % (flash attention) and 7 MiB / 20 % (without) on the
    fit grid; the plan notes it, the exact plan is authoritative."""
    c, ns, e = r.n_ctx_seq, r.n_seq, shape.n_embd
    rows = 4 * shape.kpool_rows  # f32 bytes of both cached rows per cell
    if fa_on:
        p1 = 1.0 * rows * ns * c + 6.14 * c * t + (52.7 * ns - 124) * e * t
        p2 = 7.18 * c * t - 80 * c + 52.2 * e * t + 729_000
    else:
        p1 = 0.445 * rows * ns * c + 30.4 * c * t + (62.3 * ns - 198) * e * t
        p2 = 29.2 * c * t + 60 * c + 65.4 * e * t + 190_000
    return int(max(p1, p2))


def _dsa_extra(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
    """DSA (deepseek32, glm-dsa, hy_v4) on top of the MLA attention phase: the indexer's own
    KQ mask (always f16: the fused lightning indexer is always on) plus the sparse copy of
    the attention mask (a fill and an add of the mask's type), i.e. 2 + 2 × mask bytes per
    cell and token; the top-k indices (i32 result, its cont copy, f32 zeros), about 16 bytes
    per kept key and token; and one (two without flash attention) query rows fewer than the
    plain MLA phase, which are dead by then. hy_v4 adds its hc hyper-connection streams: one
    hc-wide row per token (1.8 without flash attention) and 1/6 byte per cell and token with
    flash attention (one fixture, 1k-4k cells, 128-512 tokens, 1-3 sequences: within
    0.35 MiB, or 1.1 MiB / 2 % with 3 sequences × 4k cells without flash attention).
    Fitted on the CPU backend over indexer heads 2-8,
    key length 64-128, top-k 64-2048, 256-8192 cells, 1-4 streams: within 0.75 MiB with
    flash attention, 2.2 MiB without (where the f32 KQ scores dominate real models)."""
    cell = 2 if fa_on else 4
    kept = min(shape.dsa_top_k, r.n_ctx_seq)
    return t * (
        r.n_ctx_seq * (2 + 2 * cell) + (17 if fa_on else 15) * kept - 4 * shape.q_width * (1 if fa_on else 2)
    )


def _msa_extra(shape: ComputeShape, r: Resolved, t: int) -> int:
    """minimax-m3 with flash attention (and per-sequence streams), i.e. MiniMax sparse
    attention: graph inputs live through every layer: an f32 copy of the KQ mask and the
    f32 position mask (n_ps = cells padded to the block) and block bias, per token; then per
    stream and sparse layer the block mask expanded to cells, one per indexer head: the f32
    gathered rows, their f32 transposed copy and the f16 cast (8 bytes per head and cell and
    token of the stream, less 4 the allocator reuses). One sequence (fixtures with 2 and 4
    indexer heads, 2k-16k cells, 128/512 tokens): within 0.8 MiB / 2 %. Several sequences
    (per-stream loop): within about 20 %, more often over; the plan notes it."""
    heads, blk = shape.msa
    n_kv = r.n_ctx_seq
    n_ps = -(-n_kv // blk) * blk
    return int(t * (4 * n_kv + 4 * n_ps + 4 * (n_ps // blk)) + (8 * heads - 4) * (t // r.n_seq) * n_kv)


def _dsv4_extra(shape: ComputeShape, r: Resolved, t: int, fa_on: bool, raw_cells: int) -> int:
    """deepseek4, ROUGH (not a model of its graph): on top of the plain attention phase over
    the raw sliding-window cells, per token and compressed (CSA) cell the CSA/indexer masks,
    the top-k mask (fill, set_rows, add) and the raw+compressed mask concat (f16 with flash
    attention: ~10 bytes; f32 without: ~19 + the f32 KQ scores, 4 per head); the mask concat's
    raw part (2 or 4 bytes per raw cell and token, less the 768-cell window the fit absorbed);
    the concatenated raw+compressed K of every stream; ~2.5 hyper-connection rows (hc_mult ×
    n_embd f32) per token. Fitted on two CPU fixtures (4/8 heads, 2k-32k cells, 1-3 sequences,
    unified or not, swa_full or not): within 3 MiB / 10 %, mostly over. The plan says so in
    its notes; the exact plan is authoritative."""
    compressed = -(-r.n_ctx_seq // shape.dsv4_ratio)  # ceil division
    cells = max(256, -(-compressed // 256) * 256)
    per_cell = 10.25 if fa_on else 19.2 + 4 * shape.n_head
    k_all = (raw_cells + cells) * 2 * (shape.q_width // max(1, shape.n_head)) * r.n_seq
    return int(
        t * cells * per_cell
        + t * (raw_cells - 768) * (2 if fa_on else 4)
        + 2.5 * t * 4 * shape.n_embd * shape.hc_mult
        + k_all
    )


def _add_per_layer_inputs(
    result: dict[str, int], shape: ComputeShape, t: int, mask: int, fa_on: bool, swa_spans_cache: bool
) -> None:
    """gemma3n: every token gathers and projects 256 floats per layer (`ple_width`) before the
    first layer. That projection is its own peak: four ple_width rows per token live at once
    (gathered table row, projection, norm, sum) + two hidden rows; without flash attention
    about two more q-width rows. The projected inputs then stay live through every layer,
    next to the four altup streams: + one ple_width row and six hidden rows per token in the
    attention and FFN phases. Layer 0 is a SWA layer and runs before the gathered table is
    freed: when its window spans the whole cache (swa_full) and the f32 KQ scores exist (no
    flash attention), its attention is the peak, with about 3/4 of a ple_width row more.
    Fitted on the CPU backend (n_layer 22-26, n_embd 128-256, 256-8192 cells, 64-512 tokens,
    1-3 sequences: within 0.15 MiB, 0.6 MiB in the swa_full case)."""
    e, ple = shape.n_embd, shape.ple_width
    live = 4 * t * (ple + 6 * e) + (3 * t * ple if swa_spans_cache and not fa_on else 0)
    for phase in ("attention", "ffn"):
        if phase in result:
            result[phase] += live
    result["per-layer inputs"] = mask + 4 * t * (4 * ple + 2 * e + (16 if fa_on else 2 * shape.q_width))


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
