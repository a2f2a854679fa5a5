"""Every button and menu entry of the window works: clicked through qtbot with a model loaded.

The "New chat" and "Open GGUF…" buttons once did nothing (PySide6 passed `checked` to a
zero-argument signal) and no test noticed, because none clicked them. This test clicks every
visible, enabled `QAbstractButton` and triggers every `QAction`, closes whatever dialog or menu
that opens, and fails on any Python error raised in a slot or any Qt warning.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QAbstractButton, QApplication, QDialog, QFileDialog, QMenu

from app.main_window import MainWindow
from tests.helpers.gui import LOAD_TIMEOUT_MS, loaded_window

pytestmark = pytest.mark.slow

# Entries that end the session under test or hand the model to another process; each has a
# test of its own (tests/test_server.py serves through the window's toggle).
SKIP_TEXT = ("Quit", "Serve the loaded model", "Stop serving")


def _close_popups() -> None:
    """Close whatever modal dialog or menu a click opened (it runs inside their event loop)."""
    for widget in (QApplication.activePopupWidget(), QApplication.activeModalWidget()):
        if isinstance(widget, QDialog):
            widget.reject()
        elif isinstance(widget, QMenu) or widget is not None:
            widget.close()


@pytest.fixture
def loaded(qtbot, tmp_path, monkeypatch, smollm2_path) -> Iterator[MainWindow]:
    # "Get models…" opens the Hub pane: never the internet from a test (offline, and a port
    # where nothing listens should anything ignore offline mode)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with loaded_window(qtbot, tmp_path, monkeypatch, smollm2_path) as win:
        yield win


def _label(obj: QAbstractButton | QAction) -> str:
    return (obj.text() or obj.toolTip() or obj.objectName() or type(obj).__name__).replace("&", "")


def test_every_button_and_menu_entry_runs_without_error(qtbot, loaded, monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, exc, tb: errors.append(f"{kind.__name__}: {exc}"))
    closer = QTimer()
    closer.setInterval(20)
    closer.timeout.connect(_close_popups)
    closer.start()
    clicked: list[str] = []
    # the docks that start hidden, so that their buttons are clicked too ("Share this machine's
    # GPU" starts a worker on 127.0.0.1 only, and the second click stops it)
    loaded.machines.show()
    try:
        for button in loaded.findChildren(QAbstractButton):
            if not (button.isVisible() and button.isEnabled()) or _label(button) in SKIP_TEXT:
                continue
            clicked.append(_label(button))
            qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
            QApplication.processEvents()
            if button.isCheckable() and button.isVisible() and button.isEnabled():
                qtbot.mouseClick(button, Qt.MouseButton.LeftButton)  # and back
        for action in loaded.findChildren(QAction):
            if (
                action.isSeparator()
                or not action.isEnabled()
                or _label(action) in SKIP_TEXT
                or not action.text()
            ):
                continue
            clicked.append(_label(action))
            action.trigger()
            QApplication.processEvents()
    finally:
        closer.stop()
    assert not errors, errors
    assert {"New chat", "Open GGUF…", "Send", "Rescan", "Get models…"} <= set(clicked), clicked
    assert {"Add", "Remove", "Share this machine's GPU"} <= set(clicked), clicked
    # with nothing typed or selected, Add and Remove each said what to do, in one line
    said = loaded.machines.status.text()
    assert said in (
        "Select a worker to remove.",
        "Type a worker's address as HOST:PORT (for example 127.0.0.1:50052).",
    )
    # the Hub pane searches off the GUI thread and, offline, says so in one line
    loaded.show_hub()
    pane = loaded.hub.pane
    pane.query.setText("qwen3")
    qtbot.mouseClick(pane.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: pane.problem is not None, timeout=10_000)
    assert "offline mode" in pane.problem and "\n" not in pane.problem
    # the window still works afterwards: the model answers
    qtbot.waitUntil(lambda: loaded.chat.send_button.isEnabled(), timeout=LOAD_TIMEOUT_MS)
    assert loaded.bridge.loaded_info is not None


def test_new_chat_button_starts_an_empty_conversation(qtbot, loaded) -> None:
    loaded.chat.input.setPlainText("hello")
    with qtbot.waitSignal(loaded.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(loaded.chat.send_button, Qt.MouseButton.LeftButton)
    first = loaded.chat.conversation_id
    assert first is not None
    qtbot.mouseClick(loaded.sidebar.new_button, Qt.MouseButton.LeftButton)
    assert loaded.chat.conversation_id != first
    assert "hello" not in loaded.chat.view.toPlainText()


def test_open_gguf_button_opens_the_file_dialog(qtbot, loaded) -> None:
    seen: list[str] = []

    def look() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QFileDialog):
            seen.append(dialog.windowTitle())
            dialog.reject()

    timer = QTimer()
    timer.timeout.connect(look)
    timer.start(20)
    open_button = next(b for b in loaded.sidebar.findChildren(QAbstractButton) if b.text() == "Open GGUF…")
    try:
        qtbot.mouseClick(open_button, Qt.MouseButton.LeftButton)
    finally:
        timer.stop()
    assert seen == ["Open a GGUF model"]
