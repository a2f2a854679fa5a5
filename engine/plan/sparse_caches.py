"""Size the sparse-attention memory modules of llama.cpp 0c1e570 (notes §7).

`engine.plan.kv_sizes.kv_caches` hands these archs over to `sparse_caches`; every cache is still a
`llama_kv_cache` (one `size = …` line each), only built on tweaked hparams:

* deepseek4, `llama_kv_cache_dsv4`: (a) the raw cache, an iSWA pair whose streams are always
  per sequence (even with kv_unified) and whose every trunk layer is SWA, K only (one head of
  key_length); (b) CSA (ratio 4) and HCA (ratio 128) compressed K-only caches of
  PAD(ceil(n_ctx_seq / ratio), 256) cells × n_seq_max streams on the layers of that ratio;
  (c) the lightning-indexer K cache (one head of indexer.key_length) on the CSA layers with the
  CSA cell count; plus (d) f32 compressor states (`dsv4_states`), which are not KV cells.
* minimax-m3, `llama_kv_cache_msa`: the plain main cache and an indexer cache with one KV head
  per layer, K of indexer.key_length and V of the normal head width, after the dense lead.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.memory_types import PlanSettings
from engine.gguf.arch_keys import known_arch
from engine.gguf.inspect import GGUFInfo
from engine.plan.compute_shape import GDN_ARCHS
from engine.plan.context import CacheSize, Resolved, pad, row_bytes

CSA, HCA = 4, 128


def _comp_cells(n_ctx_seq: int, ratio: int) -> int:
    return pad(max(1, -(-n_ctx_seq // ratio)), 256)


def _cache(
    kind: str,
    layers: tuple[int, ...],
    cells: int,
    streams: int,
    tk: str,
    tv: str,
    k_width: tuple[int, ...] | int,
    v_width: tuple[int, ...] | int = 0,
    label: str = "",
) -> CacheSize:
    kw = k_width if isinstance(k_width, tuple) else (k_width,) * len(layers)
    vw = v_width if isinstance(v_width, tuple) else (v_width,) * len(layers)
    k = tuple(row_bytes(tk, w) * cells * streams for w in kw)
    v = tuple(row_bytes(tv, w) * cells * streams if w else 0 for w in vw)
    return CacheSize(
        kind, layers, cells, streams, tk, tv, tuple(sorted(set(kw))), k, v, k_only=not any(vw), label=label
    )


def sparse_caches(
    info: GGUFInfo, s: PlanSettings, r: Resolved, tk: str, tv: str, v_trans: bool
) -> tuple[list[CacheSize], int]:
    """(caches in llama.cpp's log order, SWA cells per stream or 0)."""
    sp = info.sparse or {}
    n = info.n_layer
    kvh = info.n_head_kv_per_layer
    if sp.get("kind") == "dsv4":
        streams = r.n_seq  # unified_raw = unified_compressed = false in the constructor
        swa = r.n_ctx_seq if s.swa_full else pad(min(r.n_ctx_seq, info.n_swa + r.n_ubatch), 256)
        raw = tuple(range(n))  # no filter: every layer, MTP layers included
        out = [
            _cache(
                "SWA",
                raw,
                swa,
                streams,
                tk,
                tv,
                tuple(info.head_dim_k * kvh[il] for il in raw),
                label="raw sliding-window keys (DSV4, K only, per-sequence streams)",
            )
        ]
        ratios = sp["ratios"]
        csa = tuple(il for il in range(n) if ratios[il] == CSA)
        hca = tuple(il for il in range(n) if ratios[il] == HCA)
        cells_csa, cells_hca = _comp_cells(r.n_ctx_seq, CSA), _comp_cells(r.n_ctx_seq, HCA)
        for name, layers, cells, ratio in (("CSA", csa, cells_csa, CSA), ("HCA", hca, cells_hca, HCA)):
            if layers:
                widths = tuple(info.head_dim_k * kvh[il] for il in layers)
                label = f"{name} compressed keys (1 per {ratio} tokens)"
                out.append(_cache(name, layers, cells, streams, tk, tv, widths, label=label))
        if csa:
            out.append(
                _cache(
                    "indexer",
                    csa,
                    cells_csa,
                    streams,
                    tk,
                    tv,
                    sp["indexer_key_length"],
                    label="indexer cache (lightning-indexer keys of the CSA layers)",
                )
            )
        return out, swa
    # minimax-m3: main cache on every layer, indexer cache after the dense lead
    layers = tuple(il for il in range(n) if kvh[il] > 0)
    hv = info.head_dim_v
    w_v = max(hv * kvh[il] for il in layers) if layers else 0
    main = _cache(
        "attention",
        layers,
        r.n_ctx_seq,
        r.n_stream,
        tk,
        tv,
        tuple(info.head_dim_k * kvh[il] for il in layers),
        tuple(w_v if v_trans else hv * kvh[il] for il in layers),
    )
    idx = tuple(il for il in layers if il >= sp["dense_lead"])
    out = [main]
    if idx:
        out.append(
            _cache(
                "indexer",
                idx,
                r.n_ctx_seq,
                r.n_stream,
                tk,
                tv,
                sp["indexer_key_length"],
                hv,
                label="indexer cache (MSA: one key head + one V head per layer)",
            )
        )
    return out, 0


@dataclass(frozen=True)
class StateSize:
    """One `llama_dsv4_comp_state` (its `… size = …` line): two f32 tensors (kv, score) of
    [n_embd_state, state_size, planes] per layer, planes = n_seq_max × (1 + n_rs_seq)."""

    name: str  # "csa", "hca", "lid"
    layers: tuple[int, ...]
    state_size: int
    n_embd_state: int
    planes: int

    @property
    def layer_bytes(self) -> int:
        return 2 * 4 * self.n_embd_state * self.state_size * self.planes

    @property
    def bytes(self) -> int:
        return self.layer_bytes * len(self.layers)


def dsv4_states(info: GGUFInfo, r: Resolved, n_rs_seq: int) -> list[StateSize]:
    """deepseek4's compressor states (trunk layers only: the filter runs over n_layer())."""
    sp = info.sparse or {}
    if sp.get("kind") != "dsv4":
        return []
    main = info.n_layer - info.n_layer_nextn
    planes = r.n_seq * (1 + n_rs_seq)
    csa = tuple(il for il in range(main) if sp["ratios"][il] == CSA)
    hca = tuple(il for il in range(main) if sp["ratios"][il] == HCA)
    hk, ik = info.head_dim_k, sp["indexer_key_length"]
    return [
        StateSize("csa", csa, 2 * CSA, 2 * hk, planes),
        StateSize("hca", hca, HCA, hk, planes),
        StateSize("lid", csa, 2 * CSA, 2 * ik, planes),
    ]


def ple_conv_state(info: GGUFInfo, r: Resolved, n_rs_seq: int) -> tuple[tuple[int, ...], int]:
    """qwen4exp's PLE convolution history, the recurrent memory's third row ("P", f32):
    (PLE layers, bytes per layer) = ple_conv_state floats × n_seq_max × (1 + n_rs_seq) rows
    (llama_memory_recurrent: `cache_ple_r_l<il>`, on the PLE layer only)."""
    sp = info.sparse or {}
    if sp.get("kind") != "qsa" or not sp["ple_conv_state"]:
        return (), 0
    return sp["ple_layers"], 4 * sp["ple_conv_state"] * r.n_seq * (1 + n_rs_seq)


# Architectures llama.cpp loads whose memory the analytic plan has no model for: it says so
# instead of guessing (the CLI refuses an analytic plan for them; the GUI shows the note).
UNKNOWN_TO_ANALYTIC = {
    "t5": "an encoder-decoder: the encoder output and cross-attention inputs are not modelled",
    "wavtokenizer-dec": "an audio decoder (PosNet/ConvNeXt blocks): its compute is not modelled",
}


def unknown_arch_note(info: GGUFInfo) -> str | None:
    """The sentence for an architecture the analytic plan does not know, else None: one the
    generated table does not list (llama.cpp would not load it) or one in UNKNOWN_TO_ANALYTIC."""
    arch = info.architecture
    if known_arch(arch) and arch not in UNKNOWN_TO_ANALYTIC:
        return None
    why = UNKNOWN_TO_ANALYTIC.get(arch, "llama.cpp 0c1e570 has no loader for it")
    return f"the analytic plan does not know architecture {arch!r} ({why}); use --exact"


def unmodelled_notes(info: GGUFInfo, s: PlanSettings, fa_on: bool) -> list[str]:
    """Notes for memory this module sizes only roughly or not at all (notes §7)."""
    arch = info.architecture
    unknown = unknown_arch_note(info)
    if unknown:
        return [unknown]
    if arch == "deepseek4":
        return [
            "deepseek4: KV caches and compressor states are exact, but the compute buffer "
            "of its compressed/indexed attention is only a rough estimate (about ±10 %); "
            "the exact plan (--exact) is authoritative"
        ]
    if arch == "glm5-next":
        return [
            "glm5-next: KV caches (with the k-pool indexer cache) and the KDA state are "
            "exact, but the compute buffer of its indexer and hyper-connections is only a "
            "rough estimate (about ±30 %); the exact plan (--exact) is authoritative"
        ]
    if arch in GDN_ARCHS and info.hybrid:
        return [
            f"{arch}: the compute buffer of its gated delta-net layers is a bound that never fell "
            "short on 160 dry runs of varied widths (17 % over on average, at most 68 %); the "
            "exact plan (--exact) is authoritative"
        ]
    if arch == "minimax-m3" and fa_on and s.n_seq_max > 1 and not s.kv_unified:
        return [
            "minimax-m3: the compute buffer of sparse attention over several sequences "
            "is approximate (about ±20 %); the exact plan (--exact) is authoritative"
        ]
    return []
