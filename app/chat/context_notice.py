"""The line under the transcript when the context is full: what happened and every way on.

A chat must never dead-end: when the conversation does not fit (overflow policy "stop and ask")
or a reply ran into the end of the context, this says so in one line with buttons that each
continue the chat: load the model again with the largest context this machine fits, start a new
chat (the unanswered message moves with it), or let older messages drop out.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget


class ContextNotice(QFrame):
    largerContext = Signal()
    newChat = Signal()
    dropOlder = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.label = QLabel(self, wordWrap=True)
        self.larger_button = QPushButton("Use a larger context", self)
        self.larger_button.setToolTip("Reload the model with the largest context that fits this machine")
        self.new_button = QPushButton("Start a new chat", self)
        self.drop_button = QPushButton("Let older messages drop out", self)
        self.drop_button.setToolTip("Switch this conversation to the rolling window and answer")
        for button, signal in (
            (self.larger_button, self.largerContext),
            (self.new_button, self.newChat),
            (self.drop_button, self.dropOlder),
        ):
            button.clicked.connect(lambda _checked=False, s=signal: (self.hide(), s.emit()))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.larger_button)
        layout.addWidget(self.new_button)
        layout.addWidget(self.drop_button)
        self.hide()

    def ask(self, text: str, *, can_drop: bool = True) -> None:
        """Show ``text`` with the ways on (``can_drop``: offer the rolling window too)."""
        self.label.setText(" ".join(text.split()))
        self.drop_button.setVisible(can_drop)
        self.show()
