"""Workarounds for bugs in the Qt bindings, kept in one place so each goes when its bug is fixed.

PySide6 6.12.0 hands back ``None`` from void methods (``processEvents``, ``setText``,
``QTimer.start``…) and ``True`` from ``Signal.emit`` and ``disconnect`` without taking a
reference. From Python 3.12 on these singletons are immortal and the bug is harmless; on 3.11
(our runtime) every such call lowers their reference count by one, until the interpreter aborts
with "none_dealloc" or "bool_dealloc": at every exit, and mid-session once a few thousand tokens
have been streamed (each one a signal and a repaint). `keep_singletons_alive` gives them a
reference count no session can exhaust, which is exactly what Python 3.12 does by design; extra
references to these three objects cost nothing, so it is safe with a fixed PySide6 too.
"""

from __future__ import annotations

import ctypes
import sys

_HEADROOM = 1 << 40  # a trillion leaked references: years of continuous streaming
_applied = False


def keep_singletons_alive() -> None:
    """Raise the reference counts of None, True and False by `_HEADROOM` (once, CPython < 3.12)."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    _applied = True
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _HEADROOM  # ob_refcnt is the first field


keep_singletons_alive()
