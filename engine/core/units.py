"""Bytes and counts as people read them: the one wording for the window, the CLI and error sentences."""

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


_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, … (positions of drafted tokens are small numbers)."""
    return _ORDINAL.get(n, f"{n}th")


def acceptance_by_position(drafted_at: list[int], accepted_at: list[int]) -> str:
    """ "acceptance by draft position: 1st 72% of 120, 2nd 51% of 86, …": how often the target
    kept the 1st, 2nd, … drafted token of a step; '' before anything was drafted (the CLI's bench
    and the GUI's dashboard say it the same way)."""
    parts = [
        f"{ordinal(i + 1)} {a / d:.0%} of {d:,}" for i, (d, a) in enumerate(zip(drafted_at, accepted_at)) if d
    ]
    return "acceptance by draft position: " + ", ".join(parts) if parts else ""
