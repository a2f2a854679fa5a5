"""Where the window and its docks were (saved on close, restored on start, per data folder), and
the few size limits that let the window work from 1000×700 up.

Stored in ``window.ini`` in the data folder (not the desktop-wide QSettings location), so two
data folders (a test, a portable copy) never fight over one geometry. A first start sizes the
window to the screen it opens on: the old fixed 1500×860 did not fit a 1000×700 display.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QComboBox, QMainWindow

from engine.core import paths
from engine.core.errors import KvDeckError

log = logging.getLogger(__name__)
STATE_VERSION = 1  # bump when docks change so an old layout is not applied to a new window
PREFERRED_SIZE = (1500, 880)


def _settings() -> QSettings | None:
    try:
        return QSettings(str(Path(paths.data_dir()) / "window.ini"), QSettings.Format.IniFormat)
    except (KvDeckError, OSError) as exc:
        log.info("window layout not kept: %s", exc)
        return None


def restore(win: QMainWindow) -> bool:
    """Apply the saved geometry and dock layout; False (and a screen-sized window) when none."""
    settings = _settings()
    if settings is not None and settings.value("geometry") is not None:
        ok = win.restoreGeometry(settings.value("geometry"))
        state = settings.value("state")
        if state is not None:
            ok = win.restoreState(state, STATE_VERSION) and ok
        if ok:
            return True
    screen = win.screen().availableGeometry() if win.screen() is not None else None
    if screen is None:
        win.resize(*PREFERRED_SIZE)
    else:
        win.resize(
            min(PREFERRED_SIZE[0], int(screen.width() * 0.92)),
            min(PREFERRED_SIZE[1], int(screen.height() * 0.9)),
        )
    return False


def save(win: QMainWindow, *, hub_open: bool = False) -> None:
    """Keep the geometry and dock layout; ``hub_open``: the Get models dock (built only when
    first shown, so `restore` cannot see it) was open, and opens again after the next start."""
    settings = _settings()
    if settings is None:
        return
    settings.setValue("geometry", win.saveGeometry())
    settings.setValue("state", win.saveState(STATE_VERSION))
    settings.setValue("hub_open", hub_open)
    settings.sync()


def hub_was_open() -> bool:
    settings = _settings()
    return settings is not None and bool(settings.value("hub_open", False, type=bool))


def fit_narrow_windows(win: Any) -> None:  # app.main_window.MainWindow
    """Let 1000 px hold the sidebar, the chat and the Memory dock: combo boxes as wide as a
    short name (their lists still show the full names), a narrower sidebar whose long names
    end in "…" instead of a horizontal scroll bar."""
    for combo in (win.chat.preset_box, win.chat.draft_picker.combo):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(5)
        combo.setMinimumWidth(88)  # below its cached hint: the layout takes this one
    # as narrow as its buttons allow, whole ("New chat", "Import…"; "Open GGUF…" beside an icon)
    win.sidebar.setMinimumWidth(win.sidebar.minimumSizeHint().width())
    for names in (win.sidebar.conversations, win.sidebar.models):  # "a long title…", no scroll bar
        names.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        names.setTextElideMode(Qt.TextElideMode.ElideRight)
        names.setUniformItemSizes(True)
