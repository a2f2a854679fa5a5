"""How a loaded model is named in the status bar."""

from __future__ import annotations

import re

_SIZE_WORD = re.compile(r"^\d+(\.\d+)?[KMBT]$")


def model_summary(description: str, n_params: int) -> str:
    """llama.cpp's description with its size word replaced by the real parameter count: the
    description names a size class from the layer count ("llama 256M" for SmolLM2-135M)."""
    words = description.split()
    if n_params > 0 and len(words) >= 2 and _SIZE_WORD.match(words[1]):
        words[1] = f"{format_count(n_params)} params"
    return " ".join(words)


def format_count(n: int) -> str:
    """135M, 1.7B, 70B: three significant figures at most."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size * 0.9995:  # 999.9M is "1B", not "1e+03M"
            return f"{n / size:.3g}{unit}"
    return str(n)
