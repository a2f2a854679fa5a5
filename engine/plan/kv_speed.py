"""Measured decode speed of each K/V cache type, for the cache panel's hint.

Numbers come from ``benchmarks/gpu_bench.py`` (KV Deck's own decode loop, tg128 at depth 8192,
flash attention on, 8B Q4_0); they say how much a smaller cache slows decoding on that GPU.
They are labelled with where they were measured, because another GPU will differ.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeedHint:
    measured_on: str
    setup: str
    relative: dict[str, float]  # K=V type -> decode tokens/s relative to f16


MEASURED = SpeedHint(
    measured_on="NVIDIA H100 80GB HBM3, 2026-11-25",
    setup="8B Q4_0, depth 8192, flash attention on",
    relative={"f16": 1.0, "q8_0": 0.804, "q4_0": 0.807},
)


def speed_hint(type_k: str, type_v: str, hint: SpeedHint = MEASURED) -> str:
    """One sentence for the chosen pair, or '' where nothing was measured."""
    if type_k != type_v or type_k not in hint.relative:
        return ""
    rel = hint.relative[type_k]
    cost = "" if rel >= 0.995 else f" ({(1 - rel) * 100:.0f} % slower than f16)"
    return (
        f"Decode speed with {type_k} K/V: {rel:.2f}× f16{cost}, measured on "
        f"{hint.measured_on} ({hint.setup})."
    )
