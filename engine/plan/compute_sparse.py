"""Compute-phase terms of the attention variants that go beyond plain (MLA or GQA) attention.

engine.plan.compute takes the maximum over graph phases; the sparse and exotic attentions
(DSA, QSA, MSA, deepseek4's compressed caches, glm5-next's k-pool, minimax-01's lightning
attention, gemma3n's per-layer inputs) add their own tensors to those phases, fitted on the
CPU backend as each docstring says. They live here so that compute.py keeps the common model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.plan.compute_shape import ComputeShape
    from engine.plan.context import Resolved


def qsa_attention(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
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


def add_lightning(
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


def glm5_next_attention(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
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


def dsa_extra(shape: ComputeShape, r: Resolved, t: int, fa_on: bool) -> int:
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


def msa_extra(shape: ComputeShape, r: Resolved, t: int) -> int:
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


def dsv4_extra(shape: ComputeShape, r: Resolved, t: int, fa_on: bool, raw_cells: int) -> int:
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


def add_per_layer_inputs(
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
