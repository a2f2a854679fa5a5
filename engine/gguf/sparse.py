"""Metadata of the sparse-attention memory kinds of llama.cpp 0c1e570 (notes §7).

Two archs build memory modules beyond the plain, SWA, MLA and DSA caches that are sized here:

* deepseek4 (`llama_kv_cache_dsv4`): a raw sliding-window K-only cache, CSA (ratio 4) and HCA
  (ratio 128) compressed K-only caches chosen per layer by `attention.compress_ratios`, a
  lightning-indexer K cache on the CSA layers, and f32 compressor states;
* minimax-m3 (`llama_kv_cache_msa`): the main cache plus an indexer cache (one key head of
  `attention.indexer.key_length` and, the model not being MLA, a V of the normal head width)
  on the layers after `leading_dense_block_count`.

and two more read what sizing needs beyond their DSA / hybrid-indexer caches (whose keys
are read by `engine.gguf.layer_rules.indexer_layout`):

* qwen4exp (`llama_memory_hybrid_idx`): per-layer QSA block sizes (`attention.compress_ratios`),
  hyper-connection streams and the per-layer n-gram embedding (PLE) module, whose convolution
  history is a third f32 row ("P") of the recurrent state on the PLE layer:
  `(ple.conv_kernel - 1) × ple.ngram_size × hyper_connection.count × n_embd` floats
  (`llama_hparams::ple_conv_state`);
* hy_v4: its hyper-connection stream count (compute only), refusing the non-MLA files
  llama.cpp asserts on.

`sparse_meta` reads what sizing needs into the plain dict kept as `GGUFInfo.sparse`, refusing
what llama.cpp refuses at load. Keys: "kind" ("dsv4" or "msa"), "indexer_key_length"; dsv4:
"ratios" (compression ratio per layer) and "hc_mult" (hyper-connection streams); msa:
"dense_lead", "indexer_head_count" and "block_size"; qsa (qwen4exp): "ratios", "hc_mult",
"ple_layers" and "ple_conv_state" (floats per sequence row, 0 without PLE); hc (hy_v4):
"hc_mult" only.
"""

from __future__ import annotations

from typing import Any

from engine.gguf.reader import Array, Corrupt

SPARSE_ARCHS = frozenset({"deepseek4", "minimax-m3", "qwen4exp", "hy_v4"})


def _u32(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise Corrupt(f"lacks the required key {key}")
    if type(value) is not int or not 0 <= value < 2**32:
        raise Corrupt(f"has an invalid value for {key}")
    return value


def sparse_meta(meta: dict[str, Any], arch: str, n_layer: int) -> dict[str, Any] | None:
    """The sparse-cache geometry of `arch` (None for every other arch)."""
    if arch not in SPARSE_ARCHS:
        return None
    p = f"{arch}.attention."
    if arch == "deepseek4":
        raw = meta.get(p + "compress_ratios")
        if not isinstance(raw, Array) or raw.items is None:
            raise Corrupt(f"lacks the required array {p}compress_ratios")
        if raw.length < n_layer:  # llama.cpp: "compress_ratios is shorter than block_count"
            raise Corrupt(f"has a {p}compress_ratios shorter than its {n_layer} layers")
        ratios = tuple(int(v) for v in raw.items[:n_layer])
        if any(v not in (0, 4, 128) for v in ratios):  # "only supports … 0, 4, and 128"
            raise Corrupt(f"has a {p}compress_ratios entry other than 0, 4 or 128")
        return {
            "kind": "dsv4",
            "ratios": ratios,
            "indexer_key_length": _u32(meta, p + "indexer.key_length"),
            "hc_mult": _u32(meta, f"{arch}.hyper_connection.count"),
        }
    if arch == "qwen4exp":
        return _qwen4exp(meta, arch, n_layer)
    if arch == "hy_v4":  # plain DSA caches; only its hyper-connection width matters (compute)
        if not (meta.get(p + "key_length_mla") and meta.get(p + "value_length_mla")):
            raise Corrupt("is a hy_v4 model without MLA keys (llama.cpp asserts is_mla)")
        return {"kind": "hc", "hc_mult": _u32(meta, f"{arch}.hyper_connection.count")}
    # minimax-m3
    _u32(meta, p + "indexer.block_size")
    if not meta.get(p + "indexer.block_size"):  # GGML_ASSERT(indexer_block_size > 0)
        raise Corrupt(f"has {p}indexer.block_size 0")
    return {
        "kind": "msa",
        "indexer_key_length": _u32(meta, p + "indexer.key_length"),
        "dense_lead": _u32(meta, f"{arch}.leading_dense_block_count", 0),
        "indexer_head_count": _u32(meta, p + "indexer.head_count"),
        "block_size": _u32(meta, p + "indexer.block_size"),
    }


def _qwen4exp(meta: dict[str, Any], arch: str, n_layer: int) -> dict[str, Any]:
    """qwen4exp's load_arch_hparams: the keys sizing needs, refused where llama.cpp throws."""
    hc = _u32(meta, f"{arch}.hyper_connection.count")
    if hc <= 1:  # "must be greater than one"
        raise Corrupt(f"has {arch}.hyper_connection.count {hc} (llama.cpp needs more than 1)")
    if not _u32(meta, f"{arch}.hyper_connection.low_rank"):
        raise Corrupt(f"has {arch}.hyper_connection.low_rank 0")
    raw = meta.get(f"{arch}.attention.compress_ratios")
    ratios: tuple[int, ...] = (0,) * n_layer
    if isinstance(raw, Array):  # get_key_or_arr: exactly one per layer
        if raw.items is None or raw.length != n_layer:
            raise Corrupt(f"has a {arch}.attention.compress_ratios that is not one per layer")
        ratios = tuple(int(v) for v in raw.items)
    elif raw is not None:
        ratios = (_u32(meta, f"{arch}.attention.compress_ratios"),) * n_layer
    out = {"kind": "qsa", "ratios": ratios, "hc_mult": hc, "ple_layers": (), "ple_conv_state": 0}
    layers = meta.get(f"{arch}.ple.layers")
    if not isinstance(layers, Array) or not layers.length:
        return out
    if layers.items is None or layers.length != 1:  # "only one PLE layer is supported"
        raise Corrupt(f"has {layers.length} {arch}.ple.layers (llama.cpp supports one)")
    ple = tuple(int(v) for v in layers.items)
    if ple[0] >= n_layer:
        raise Corrupt(f"has PLE layer {ple[0]} out of range")
    ngram = _u32(meta, f"{arch}.ple.ngram_size")
    kernel = _u32(meta, f"{arch}.ple.conv_kernel")
    heads = _u32(meta, f"{arch}.ple.heads_per_ngram")
    if not kernel or not 2 <= ngram <= 8 or not 0 < (ngram - 1) * heads <= 64:
        raise Corrupt(f"has an unusable {arch}.ple setup (n-gram {ngram}, kernel {kernel})")
    n_embd = _u32(meta, f"{arch}.embedding_length")
    return {**out, "ple_layers": ple, "ple_conv_state": (kernel - 1) * ngram * hc * n_embd}
