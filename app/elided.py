"""A label and a combo box that end their text in "…" instead of cutting it mid-letter.

A plain QLabel's minimum width is its whole text, and a QComboBox draws its entry clipped, so in
the chat's top row ("Model: x.gguf  Draft: [the model's own MTP heads (3 layers)]") at 1000 px the
combo was the one squeezed, showing "the model's own". There the model's name gives way (the
status bar holds it too) and the combo asks for room for the entry it shows, up to a cap.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPaintEvent, QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QLabel,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QWidget,
)


class ElidedLabel(QLabel):
    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setText(text)

    def text(self) -> str:
        """The whole text, as set (what is shown may be elided)."""
        return self._full

    def setText(self, text: str) -> None:  # noqa: N802  (Qt's name)
        self._full = text
        self._elide()

    def sizeHint(self):  # noqa: ANN201, N802  (Qt's name; QSize)
        hint = super().sizeHint()
        hint.setWidth(self.fontMetrics().horizontalAdvance(self._full) + 2 * self.margin() + 4)
        return hint

    def minimumSizeHint(self):  # noqa: ANN201, N802  (Qt's name; QSize)
        """As narrow as need be; its hint stays the whole text, so a splitter sizes its pane
        as it would for a plain label."""
        hint = super().minimumSizeHint()
        hint.setWidth(0)
        return hint

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(0, self.width()))
        super().setText(shown)
        self.updateGeometry()


class ElidedCombo(QComboBox):
    """Draws the entry shown elided, and asks for its width up to ``max_chars`` characters
    (the list that opens still shows every entry whole)."""

    def __init__(self, parent: QWidget | None = None, max_chars: int = 40) -> None:
        super().__init__(parent)
        self._max_chars = max_chars
        self._need = 0  # the width of the entry shown, whole
        self.about = ""  # what the choice does: the tooltip, under the entry shown in whole
        self.currentIndexChanged.connect(self.fit_current)

    def fit_current(self) -> None:
        """Ask for the width of the entry shown (call it after a change made with signals blocked)."""
        fm = self.fontMetrics()
        self._need = max(88, fm.horizontalAdvance(self.currentText()) + 40)  # the frame and the arrow
        self.setMinimumWidth(min(self._need, self._max_chars * fm.averageCharWidth()))
        self.updateGeometry()
        self.setToolTip(f"{self.currentText()}\n\n{self.about}".strip())

    def sizeHint(self):  # noqa: ANN201, N802  (Qt's name; QSize)
        """Whole where the row has room, whatever the size-adjust policy."""
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self._need))
        return hint

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QStylePainter(self)
        opt = QStyleOptionComboBox()
        self.initStyleOption(opt)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, opt)
        field = self.style().subControlRect(
            QStyle.ComplexControl.CC_ComboBox, opt, QStyle.SubControl.SC_ComboBoxEditField, self
        )
        opt.currentText = self.fontMetrics().elidedText(
            opt.currentText, Qt.TextElideMode.ElideRight, field.width()
        )
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, opt)
