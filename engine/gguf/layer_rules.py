"""The per-layer rules of llama.cpp's loader that ``engine.gguf.inspect`` applies: how a key is
read (a 32-bit scalar, or one value per layer as ``get_key_or_arr`` reads it), which layers use
sliding-window attention and which keep a lightning indexer's keys.

Split from ``engine.gguf.inspect`` (which builds ``GGUFInfo`` from these) so each rule sits
beside the llama.cpp code it follows (``llama_model_base::load_hparams``, ``src/models/*.cpp``);
a file llama.cpp would refuse or abort on raises ``Corrupt`` with the reason.
"""

from __future__ import annotations

from typing import Any

from engine.gguf.hparams import (
    DSA_ARCHS,
    IDX_HYBRID_ARCHS,
    NO_MEMORY_ARCHS,
    SWA_ALWAYS,
    SWA_IF_WINDOW,
    indexer_layer_flags,
)
from engine.gguf.reader import Array as _Array
from engine.gguf.reader import Corrupt as _Corrupt

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp aborts (GGML_ASSERT) above this.
_U32_MAX = 2**32 - 1


def int_key(
    meta: dict[str, Any], key: str, default: int | None = None, required: bool = False, wide: bool = False
) -> int | None:
    """An integer scalar key; rejects floats, strings, negatives and arrays, and (unless `wide`)
    values beyond 32 bits, which llama.cpp reads every such key as (a u64 one fails to load)."""
    if key not in meta:
        if required:
            raise _Corrupt(f"lacks the required key {key}")
        return default
    value = meta[key]
    if type(value) is not int or value < 0 or (value > _U32_MAX and not wide):
        raise _Corrupt(f"has an invalid value for {key}")
    return value


def per_layer(meta: dict[str, Any], key: str, n_layer: int, default: tuple[int, ...]) -> tuple[int, ...]:
    """llama.cpp's get_key_or_arr: a scalar for every layer or an array of exactly n_layer."""
    value = meta.get(key)
    if value is None:
        return default
    if isinstance(value, _Array):
        if (
            value.length != n_layer
            or value.items is None
            or value.elem_type in (6, 7, 12)
            or min(value.items, default=0) < 0
        ):
            raise _Corrupt(f"has an array {key} that is not one count per layer")
        return tuple(int(v) for v in value.items)
    return (int_key(meta, key) or 0,) * n_layer


def swa_layout(
    meta: dict[str, Any], arch: str, n_layer: int, n_layer_main: int, n_head_kv: tuple[int, ...]
) -> tuple[int, tuple[bool, ...]]:
    """(window, per-layer SWA flags) as the arch's load_arch_hparams sets them; (0, all False)
    when llama.cpp runs the model without sliding-window attention."""
    p = f"{arch}.attention."
    window = int_key(meta, p + "sliding_window")
    if arch in SWA_ALWAYS:
        period, dense_first, default = SWA_ALWAYS[arch]
        window = default if window is None else window
        if window is None:
            raise _Corrupt(f"lacks the required key {p}sliding_window")
    elif arch in SWA_IF_WINDOW and window:
        period, dense_first = SWA_IF_WINDOW[arch]
        window = 4096 if arch == "smallthinker" else window
    elif arch in ("lfm2", "lfm2moe") and window:
        return window, tuple(kv > 0 for kv in n_head_kv)  # every attention layer
    elif arch == "llama4" and window != 0:
        window, period, dense_first = 8192, 4, False  # chunked attention, window forced
    elif arch == "exaone4" and n_layer_main == 64:
        window, period, dense_first = window or 4096, 4, False
    elif arch == "deepseek4":
        return int_key(meta, p + "sliding_window", required=True) or 0, (True,) * n_layer
    else:
        return 0, (False,) * n_layer
    pattern = meta.get(p + "sliding_window_pattern")
    if isinstance(pattern, _Array):
        if pattern.items is None or pattern.length > MAX_LAYERS:
            raise _Corrupt(f"has an unusable {p}sliding_window_pattern")
        given = tuple(bool(v) for v in pattern.items[:n_layer])
        return window, _some_swa(arch, p, given + (False,) * (n_layer - len(given)))
    if pattern is not None:  # a scalar overrides the arch's period
        period = int_key(meta, p + "sliding_window_pattern")
    if period is None:
        raise _Corrupt(f"lacks the required array {p}sliding_window_pattern")
    return window, _some_swa(
        arch,
        p,
        tuple(
            il < n_layer_main
            and (period == 0 or (il % period != 0 if dense_first else il % period < period - 1))
            for il in range(n_layer)
        ),
    )


def _some_swa(arch: str, p: str, flags: tuple[bool, ...]) -> tuple[bool, ...]:
    """The arch turned sliding-window attention on, so llama_model::create_memory asserts
    `hparams.is_swa_any()` (an abort): an empty or all-false pattern cannot load."""
    if not any(flags) and arch not in NO_MEMORY_ARCHS:
        raise _Corrupt(
            f"turns sliding-window attention on, but {p}sliding_window_pattern "
            "marks no layer as sliding-window (llama.cpp aborts)"
        )
    return flags


def indexer_layout(
    meta: dict[str, Any], arch: str, n_layer: int, n_main: int, n_ctx: int, recurrent: tuple[bool, ...]
) -> tuple[dict[str, int] | None, tuple[bool, ...]]:
    """The lightning-indexer keys of a DSA or hybrid-idx arch and its per-layer cache flags.
    deepseek32, glm-dsa, glm5-next and qwen4exp require the keys (llama.cpp fails to load
    without them). "cache_width" is the cached row: key_length, × 3 with glm5-next's k-pool
    (key, gate and pooled values per token)."""
    if arch not in DSA_ARCHS and arch not in IDX_HYBRID_ARCHS:
        return None, ()
    p = f"{arch}.attention.indexer."
    required = arch != "hy_v4"
    idx = {k: int_key(meta, p + k, 0, required=required) or 0 for k in ("head_count", "key_length", "top_k")}
    if arch == "qwen4exp" and not all(idx.values()):  # qwen4exp_require_nonzero
        raise _Corrupt(f"has a zero {p}head_count, key_length or top_k")
    idx["cache_width"] = idx["key_length"]
    if arch == "glm5-next":  # GGML_ASSERT(kpool > 1 && top_k % kpool == 0): an abort
        kpool = int_key(meta, p + "kpool", required=True) or 0
        if kpool <= 1 or idx["top_k"] % kpool:
            raise _Corrupt(f"has an unusable {p}kpool ({kpool}: must exceed 1 and divide top_k)")
        idx["cache_width"] = 3 * idx["key_length"]
        if int_key(meta, f"{arch}.rope.dimension_count", 1):  # n_rot defaults to the head size
            raise _Corrupt(
                f"has rotary dimensions, but llama.cpp asserts that glm5-next's MLA "
                f"is NoPE-only ({arch}.rope.dimension_count must be 0)"
            )
    read = arch in ("glm-dsa", "glm5-next", "dots3note") or (arch == "hy_v4" and idx["top_k"] > 0)
    raw = meta.get(p + "types") if read else None
    types: tuple[int, ...] | None = None
    if isinstance(raw, _Array):  # bool, uint32 or int32 elements, one per trunk layer
        if raw.items is None or raw.elem_type not in (4, 5, 7):
            raise _Corrupt(f"has an unusable {p}types")
        types = tuple(int(v) for v in raw.items)
    elif raw is not None:
        types = ((int_key(meta, p + "types") or 0),) * n_main
    if arch == "dots3note":  # get_arr, required, any length up to LLAMA_MAX_LAYERS
        if types is None or len(types) > MAX_LAYERS:
            raise _Corrupt(f"lacks a usable array {p}types")
        types = (types + (0,) * n_main)[:n_main]
    try:
        flags = indexer_layer_flags(arch, n_layer, n_main, n_ctx, idx["top_k"], types, recurrent)
    except ValueError as exc:
        raise _Corrupt(f"has an unusable indexer setup ({exc})") from None
    return (idx if any(flags) else None), flags
