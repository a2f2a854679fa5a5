"""Size the caches llama.cpp (0c1e570) creates for a model and context, from metadata alone.

Split out of `engine.plan.analytic` (which places these bytes on devices and adds weights, output
and compute): this module resolves the context (notes §1), derives the per-layer geometry once
per model file (`ModelGeometry`), and sizes every `llama_kv_cache` the memory module builds
(§2-§5, and the DSA lightning-indexer key cache of §7; the other §7 kinds are in
`engine.plan.sparse_caches`). Each `CacheSize` is one `llama_kv_cache: size = …` line of llama.cpp's
log, as an exact tensor sum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.core.memory_types import PlanSettings
from engine.gguf.hparams import IDX_HYBRID_ARCHS, NO_MEMORY_ARCHS, WeightLayout
from engine.gguf.inspect import GGUFInfo
from engine.plan.compute_shape import ComputeShape
from engine.plan.context import BLOCKS, CacheSize, Resolved, pad, resolve_context, row_bytes
from engine.plan.sparse_caches import sparse_caches


@dataclass(frozen=True)
class ModelGeometry:
    """Everything per layer that sizing needs, derived once per model file."""

    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    kv_layers: tuple[int, ...]
    k_width: tuple[int, ...]  # n_embd_k_gqa(il) for every layer
    v_width: tuple[int, ...]
    head_k: tuple[int, ...]
    head_v: tuple[int, ...]
    n_head: tuple[int, ...]
    swa: tuple[bool, ...]
    iswa: bool  # sliding-window cache pair in use (swa_type != NONE)
    mla: bool
    indexer_layers: tuple[int, ...]  # layers with a lightning-indexer K cache (§7)
    indexer_width: int  # its K row (one head of indexer.key_length); 0 = no indexer cache
    rec_layers: tuple[int, ...]
    n_embd_r: int
    n_embd_s: int
    weights: WeightLayout | None
    compute: ComputeShape


def _n_embd_r_s(info: GGUFInfo) -> tuple[int, int]:
    """llama_hparams::n_embd_r / n_embd_s (§6), state floats per layer per sequence."""
    ssm = info.ssm or {}
    if ssm.get("wkv_head_size"):
        shift = ssm.get("token_shift_count") or 2
        return shift * info.n_embd, info.n_embd * ssm["wkv_head_size"]
    if ssm.get("shortconv_l_cache"):
        return info.n_embd * (ssm["shortconv_l_cache"] - 1), 0
    if ssm.get("kda_head_dim"):
        kda, heads, d_conv = ssm["kda_head_dim"], info.n_head_per_layer[0], ssm.get("d_conv", 0)
        return 3 * (d_conv - 1 if d_conv > 0 else 3) * heads * kda, kda * kda * heads
    d_conv, d_inner = ssm.get("d_conv", 0), ssm.get("d_inner", 0)
    d_state, n_group = ssm.get("d_state", 0), ssm.get("n_group", 0)
    r = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
    if info.architecture == "minimax-01":  # lightning attention: n_embd_head_la = head_k
        return r, info.head_dim_k**2 * info.n_head_per_layer[0]
    return r, d_state * d_inner


_GEOMETRY: dict[tuple[object, ...], ModelGeometry] = {}


def geometry(info: GGUFInfo) -> ModelGeometry:
    """The cached ModelGeometry of a GGUFInfo (keyed by file identity and shape)."""
    key = (
        info.path,
        info.file_bytes,
        info.tensor_bytes,
        info.architecture,
        info.n_layer,
        info.n_ctx_train,
        info.n_head_kv_per_layer,
        info.kv_layers,
        info.swa_layers,
        info.indexer_layers,
    )
    geo = _GEOMETRY.get(key)
    if geo is None:
        if len(_GEOMETRY) > 64:
            _GEOMETRY.clear()
        geo = _GEOMETRY[key] = _build_geometry(info)
    return geo


def _build_geometry(info: GGUFInfo) -> ModelGeometry:
    n = info.n_layer
    swa = tuple(info.swa_layers) or (False,) * n
    hk = tuple(info.head_dim_k_swa if s and info.head_dim_k_swa else info.head_dim_k for s in swa)
    hv = tuple(info.head_dim_v_swa if s and info.head_dim_v_swa else info.head_dim_v for s in swa)
    kvh = info.n_head_kv_per_layer
    kv_layers = tuple(il for il, k in enumerate(info.kv_layers) if k and kvh[il] > 0)
    if not info.kv_layers and not info.recurrent:  # old callers: every layer with KV heads
        kv_layers = tuple(il for il in range(n) if kvh[il] > 0)
    n_main = n - info.n_layer_nextn
    rec = tuple(il for il, r in enumerate(info.recurrent_layers) if r and il < n_main)
    r, s = _n_embd_r_s(info) if rec else (0, 0)
    mla = info.mla is not None
    ff = info.n_ff_per_layer or (0,) * n
    shape = ComputeShape.from_info(info, kv_layers, hk, rec, r, s, ff)
    return ModelGeometry(
        arch=info.architecture,
        n_layer=n,
        n_embd=info.n_embd,
        n_vocab=info.n_vocab,
        kv_layers=kv_layers,
        k_width=tuple(h * k for h, k in zip(hk, kvh)),
        v_width=tuple(h * k for h, k in zip(hv, kvh)),
        head_k=hk,
        head_v=hv,
        n_head=info.n_head_per_layer,
        swa=swa,
        iswa=any(swa),  # swa_type set, even with window 0
        mla=mla,
        indexer_layers=tuple(il for il, f in enumerate(info.indexer_layers) if f),
        indexer_width=(info.indexer or {}).get("cache_width", 0),
        rec_layers=rec,
        n_embd_r=r,
        n_embd_s=s,
        weights=info.weights,
        compute=shape,
    )


def kv_caches(
    info: GGUFInfo, settings: PlanSettings, r: Resolved | None = None, v_trans: bool | None = None
) -> tuple[list[CacheSize], int]:
    """The attention caches llama.cpp creates (§2-§5) and the SWA cell count (0 if none).
    v_trans: V stored transposed (flash attention explicitly off) pads V to the widest layer."""
    geo = geometry(info)
    r = r or resolve_context(settings, info.n_ctx_train, info.causal)
    if v_trans is None:
        v_trans = settings.flash_attn == "off"
    tk = settings.type_k if settings.type_k in BLOCKS else "f16"
    tv = settings.type_v if settings.type_v in BLOCKS else "f16"
    n_swa_cells = 0
    if geo.iswa:
        n_unified = r.n_seq if settings.kv_unified else 1
        n_swa_cells = (
            r.n_ctx_seq
            if settings.swa_full
            else pad(min(r.n_ctx_seq, info.n_swa * n_unified + r.n_ubatch), 256)
        )
    if geo.arch in NO_MEMORY_ARCHS:
        return [], n_swa_cells
    if (info.sparse or {}).get("kind") in ("dsv4", "msa"):  # §7 caches on tweaked hparams
        return sparse_caches(info, settings, r, tk, tv, v_trans)
    w_v_max = max(geo.v_width) if geo.v_width else 0
    groups = [("attention", False)] if not geo.iswa else [("full-attention", False), ("SWA", True)]
    out = []
    for kind, want_swa in groups:
        layers = tuple(il for il in geo.kv_layers if (geo.iswa and geo.swa[il]) == want_swa)
        if not layers:
            continue
        cells = n_swa_cells if want_swa else r.n_ctx_seq
        k = tuple(row_bytes(tk, geo.k_width[il]) * cells * r.n_stream for il in layers)
        v = tuple(
            0 if geo.mla else row_bytes(tv, w_v_max if v_trans else geo.v_width[il]) * cells * r.n_stream
            for il in layers
        )
        widths = tuple(sorted({geo.k_width[il] for il in layers}))
        out.append(CacheSize(kind, layers, cells, r.n_stream, tk, tv, widths, k, v, geo.mla))
    if geo.indexer_width:
        out.append(_indexer_cache(geo, r, tk, tv, v_trans))
    if geo.arch == "dots3note" and geo.iswa:  # llama_kv_cache_dsa_iswa: DSA (main + indexer)
        swa = [c for c in out if c.kind == "SWA"]  # cache of the full layers, then SWA
        out = [
            replace(c, kind="attention") if c.kind == "full-attention" else c for c in out if c.kind != "SWA"
        ] + swa
    return out, n_swa_cells


def _indexer_cache(geo: ModelGeometry, r: Resolved, tk: str, tv: str, v_trans: bool) -> CacheSize:
    """The K-only indexer cache of §7: llama_kv_cache_dsa's second cache, or the "idx_" cache
    of llama_memory_hybrid_idx (qwen4exp, glm5-next). Both run the llama_kv_cache code on
    hparams with one KV head of `cache_width` per layer (indexer.key_length; × 3 with
    glm5-next's k-pool), the main cache's cells, streams and K type; neither stores V (the DSA
    models are MLA, and the hybrid-idx cache is declared MLA to drop it). Small next to the
    main cache, but it grows with the context like any K cache."""
    layers = geo.indexer_layers
    cells, width = r.n_ctx_seq, geo.indexer_width
    k = tuple(row_bytes(tk, width) * cells * r.n_stream for _ in layers)
    label = (
        "indexer cache (idx_: indexer keys, one head per attention layer)"
        if geo.arch in IDX_HYBRID_ARCHS
        else "indexer cache (DSA lightning-indexer keys, one head per layer)"
    )
    return CacheSize(
        "indexer", layers, cells, r.n_stream, tk, tv, (width,), k, (0,) * len(layers), True, label
    )
