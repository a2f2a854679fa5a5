"""The context slider: a mark at the fitted maximum shows how far the context can go.

Painted over the style's own slider (not a separate widget beside it) so the mark stays aligned
with the handle at any width and style; the cache panel moves the mark after each refit.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSlider, QStyle, QStyleOptionSlider, QWidget

from app.theme import series


class MarkedSlider(QSlider):
    """A horizontal slider with a mark at the fitted maximum, so "how far can I go" is visible."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.mark: int | None = None

    def set_mark(self, value: int | None) -> None:
        self.mark = value
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        super().paintEvent(event)
        if self.mark is None or self.maximum() <= self.minimum():
            return
        opt = QStyleOptionSlider()
        self.initStyleOption(opt)
        handle = self.style().subControlRect(
            QStyle.ComplexControl.CC_Slider, opt, QStyle.SubControl.SC_SliderHandle, self
        )
        span = self.width() - handle.width()
        x = (
            QStyle.sliderPositionFromValue(
                self.minimum(), self.maximum(), min(self.mark, self.maximum()), span
            )
            + handle.width() // 2
        )
        painter = QPainter(self)
        painter.setPen(QPen(series("limit"), 2))
        painter.drawLine(x, 0, x, self.height())
        painter.end()
