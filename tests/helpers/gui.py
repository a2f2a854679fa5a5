"""The real window for tests: opened on a private chat store, files dropped on it, asked things."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.main_window import MainWindow
from engine.storage.store import ChatStore

LOAD_TIMEOUT_MS = 120_000


def new_window(qtbot, tmp_path, monkeypatch, demo, *, max_tokens: int = 24) -> MainWindow:
    """A real window on a private chat store, greedy replies, ``demo`` as the first-start model."""
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(demo))
    store = ChatStore(tmp_path / "chat.sqlite3")
    store.set_setting("preset", "Greedy (deterministic)")
    store.set_setting("max_tokens", max_tokens)
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.show()
    return win


@contextlib.contextmanager
def loaded_window(
    qtbot, tmp_path, monkeypatch, demo, *, max_tokens: int = 24, timeout_ms: int = LOAD_TIMEOUT_MS
) -> Iterator[MainWindow]:
    """``new_window`` started, once its first model has loaded; closed with its store afterwards."""
    win = new_window(qtbot, tmp_path, monkeypatch, demo, max_tokens=max_tokens)
    try:
        with qtbot.waitSignal(win.bridge.loaded, timeout=timeout_ms):
            win.start()
        yield win
    finally:
        win.close()
        win.store.close()


def drop_url(win: MainWindow, url: QUrl) -> bool:
    """Drag any URL over the chat transcript and drop it, as a file manager or browser would;
    True when the drag was accepted and the drop delivered."""
    mime = QMimeData()
    mime.setUrls([url])
    target = win.chat.view.viewport()
    pos = QPoint(40, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(
            pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
        )
    QApplication.sendEvent(target, enter)
    accepted = enter.isAccepted()
    event = QDropEvent(
        QPointF(pos),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    return QApplication.sendEvent(target, event) and accepted


def drop(win: MainWindow, path: str) -> None:
    """Drag a local file over the chat transcript and drop it; the window must take it."""
    assert drop_url(win, QUrl.fromLocalFile(path))


def ask(qtbot, win: MainWindow, text: str) -> None:
    """Type ``text``, click Send and wait for the reply to finish."""
    win.chat.input.setPlainText(text)
    with qtbot.waitSignal(win.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
