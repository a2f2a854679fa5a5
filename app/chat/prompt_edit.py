"""The prompt box: Enter sends, Shift+Enter adds a line (or Ctrl+Enter sends: Chat menu)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QPlainTextEdit


class PromptEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter adds a line (or, with ``ctrl_enter_sends``, Ctrl+Enter sends and
    Enter adds a line); dropped files go to the window, not into the text."""

    submitted = Signal()
    ctrl_enter_sends = False

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        mods = event.modifiers()
        wanted = (
            Qt.KeyboardModifier.ControlModifier if self.ctrl_enter_sends else Qt.KeyboardModifier.NoModifier
        )
        if (
            event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and not (mods & Qt.KeyboardModifier.ShiftModifier)
            and (mods & Qt.KeyboardModifier.ControlModifier) == wanted
        ):
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.ignore()  # let the main window take model files
            return
        super().dragEnterEvent(event)
