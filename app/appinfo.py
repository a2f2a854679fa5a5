"""What the window knows about itself: its name, its bundled resources, its start time.

At the bottom of ``app`` (it imports nothing from it), so the window, the About dialog and the
start-up code can all use it without importing each other.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

#: The one spelling of the product name in the window (titles, About, Qt's application name).
APP_NAME = "KV Deck"


def resource_path(relative: str) -> Path:
    """A file under ``resources/`` (next to the packages in a checkout, bundled when frozen)."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
    return base / "resources" / relative


def seconds_since_start() -> float:
    """Wall time since this process started (the cold-start figure users feel).

    On Linux both figures come from the kernel's clock since boot: psutil's ``create_time`` adds
    the boot time, which /proc/stat gives in whole seconds, so it runs up to a second late (0.54 s
    on the machine that measured the cold start)."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            start_ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux (os.sysconf is POSIX only)
        import psutil

        return time.time() - psutil.Process().create_time()
