"""KV Deck desktop app (PySide6): thin widgets over `engine` objects."""

from app import qt_compat  # noqa: F401  (must run before any Qt call: see its docstring)
