"""Bytes as people read them: the one formatter for the window, the CLI and error sentences."""

from __future__ import annotations

_KIB, _MIB, _GIB = 1 << 10, 1 << 20, 1 << 30


def format_bytes(n: float, signed: bool = False) -> str:
    """GiB from one GiB (two decimals), MiB from one MiB (one decimal), KiB below; zero is
    "0 MiB". The binary units nvidia-smi and llama.cpp's logs use, so numbers can be compared.
    ``signed``: a difference, always with its sign ("+", "−", or "±" for zero)."""
    sign = ("+" if n > 0 else "−" if n < 0 else "±") if signed else ("−" if n < 0 else "")
    n = abs(n)
    if n >= _GIB:
        return f"{sign}{n / _GIB:,.2f} GiB"
    if n >= _MIB or n == 0:
        return f"{sign}{n / _MIB:,.1f} MiB" if n else f"{sign}0 MiB"
    return f"{sign}{n / _KIB:,.1f} KiB"
