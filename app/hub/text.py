"""Words for the Get-models pane: counts, speeds, time left, roles and verdict lines.

Pure functions (no Qt), so the pane's wording is tested without a window and stays the same
wherever a number appears (search results, file rows, download rows).
"""

from __future__ import annotations

from engine.core.units import format_bytes
from engine.hub.download import Progress
from engine.hub.verdict import Candidate

ROLE_WORDS = {"model": "model", "mmproj": "vision projector", "draft": "assistant (draft)", "mtp": "MTP head"}


def one_line(text: str) -> str:
    """Collapse whitespace: every message in the pane is one line, whatever the engine says."""
    return " ".join(str(text).split())


def count(n: int) -> str:
    """1234 -> "1.2k", 3_400_000 -> "3.4M": downloads and likes at a glance."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            value = n / size
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(n)


def duration(seconds: float | None) -> str:
    """Time left as a person says it: "45 s", "3 min 20 s", "1 h 05 min"."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "time left unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def size_text(size: int | None) -> str:
    return "size unknown" if size is None else format_bytes(size)


def role_text(role: str) -> str:
    return ROLE_WORDS.get(role, role)


def verdict_text(c: Candidate) -> str:
    """The verdict line of a file row: the engine's own sentence, or why there is none."""
    if c.verdict is not None:
        return one_line(c.verdict.text)
    return one_line(c.error or "no verdict")


def progress_text(p: Progress | None, state: str) -> str:
    """ "120 MiB of 4.5 GiB · 12.3 MiB/s · 3 min 20 s left" for a download row."""
    if state == "queued":
        return "waiting for the download before it"
    if p is None:
        return "starting…"
    if state == "done" or p.state == "done":
        return f"done · {format_bytes(p.total)}"
    if state == "cancelled":
        return "cancelled"
    if state == "failed":
        return one_line(p.message or "failed")
    if p.state == "checking":
        return "checking the part already downloaded…"
    if p.state == "verifying":
        return "checking the sha256…"
    parts = [f"{format_bytes(p.done)} of {format_bytes(p.total)}"]
    if p.speed > 0:
        parts.append(f"{format_bytes(p.speed)}/s")
    parts.append(f"{duration(p.eta_s)} left" if p.eta_s is not None else "time left unknown")
    return " · ".join(parts)
