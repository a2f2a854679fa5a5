"""The sampling a model's author recommends, from ``general.sampling.*`` in its GGUF.

llama-server starts every request from these where the file has them and its command line did
not set them (common/common.cpp ``common_init_sampler_from_model``, 0c1e570). It reads each key
as text (``llama_model_meta_val_str``) and keeps what ``strtol``/``strtof`` parse from its start,
so a number of either type, or a string that begins with one, counts. KV Deck supports the
keys below; XTC, mirostat and ``general.sampling.sequence`` have no counterpart in its sampler
chain and are ignored. A value outside what the sampler accepts (engine.core.sampling) is
dropped rather than refusing every request.
"""

from __future__ import annotations

import re
from typing import Any

#: general.sampling.<key> -> (SamplingParams field, integer)
KEYS: dict[str, tuple[str, bool]] = {
    "temp": ("temperature", False),
    "top_k": ("top_k", True),
    "top_p": ("top_p", False),
    "min_p": ("min_p", False),
    "penalty_repeat": ("repeat_penalty", False),
    "penalty_last_n": ("repeat_last_n", True),
}

_LIMITS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 5.0),
    "top_k": (0, 1 << 20),
    "top_p": (1e-9, 1.0),
    "min_p": (0.0, 0.999999),
    "repeat_penalty": (0.5, 3.0),
    "repeat_last_n": (0, 1 << 20),
}

_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _leading_number(value: Any, integer: bool) -> float | None:
    """What strtol (integer) or strtof parse from the value as llama.cpp prints it
    (``gguf_data_to_str``: ``std::to_string``, so a float has six decimals), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None  # a bool prints "true"/"false", an array is no number
    text = value if isinstance(value, str) else f"{value:f}" if isinstance(value, float) else str(value)
    m = re.match(r"\s*[-+]?\d+" if integer else _NUMBER.pattern, text)
    return float(int(m.group(0))) if m and integer else float(m.group(0)) if m else None


def recommended_sampling(meta: dict[str, Any]) -> dict[str, float]:
    """The SamplingParams fields the file recommends (only those it has, within range)."""
    out: dict[str, float] = {}
    for key, (name, integer) in KEYS.items():
        value = _leading_number(meta.get("general.sampling." + key), integer)
        lo, hi = _LIMITS[name]
        if value is not None and lo <= value <= hi:
            out[name] = int(value) if integer else value
    return out
