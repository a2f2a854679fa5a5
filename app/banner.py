"""The problem banner at the top of the window: one line, an optional action, a close button.

Every problem the user should see (a refused file, a crashed runtime, a chat history that cannot
be written) goes through here as one line, never a dialog, so the conversation stays in view.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from app.theme import banner_style


class Banner(QFrame):
    """One-line problems, with an optional action such as "Restart runtime"."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self._restyle()
        self.label = QLabel(self, wordWrap=True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_button = QPushButton(self)
        self.action_button.hide()
        close = QPushButton("✕", self, flat=True, clicked=self.hide)
        close.setFixedWidth(28)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button)
        layout.addWidget(close)
        self._action = None
        self.sticky = False  # stays when a model load starts (e.g. "chat history is read-only")
        self.action_button.clicked.connect(self._run_action)
        self.hide()

    def _restyle(self) -> None:
        """Colours from the application palette (the widget's own is the style sheet's result)."""
        style = banner_style(QApplication.palette())
        if style != self.styleSheet():
            self.setStyleSheet(style)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt API)
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._restyle()

    def show_message(
        self,
        text: str,
        action_text: str = "",
        action=None,  # noqa: ANN001
        sticky: bool = False,
    ) -> None:
        self.label.setText(" ".join(text.split()))
        self.sticky = sticky
        self._action = action
        self.action_button.setText(action_text)
        self.action_button.setVisible(bool(action_text and action))
        self.show()

    def _run_action(self) -> None:
        self.hide()
        if self._action is not None:
            self._action()
