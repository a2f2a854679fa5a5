"""What the window knows about itself: its name, its bundled resources, its start time.

At the bottom of ``app`` (it imports nothing from it), so the window, the About dialog and the
start-up code can all use it without importing each other.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

#: The one spelling of the product name in the window (titles, About, Qt's application name).
APP_NAME = "KV Deck"


def resource_path(relative: str) -> Path:
    """A file under ``resources/`` (next to the packages in a checkout, bundled when frozen)."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
    return base / "resources" / relative


def seconds_since_start() -> float:
    """Wall time since this process started (the cold-start figure users feel)."""
    return time.time() - psutil.Process().create_time()
