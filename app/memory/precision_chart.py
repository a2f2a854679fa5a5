"""Memory against quality: one point per KV cache type, KV MiB across, mean KL divergence up.

KL spans orders of magnitude between f16 and a 4-bit cache, so the y axis is logarithmic, from a
decade below the smallest non-zero KL; the f32 reference (KL exactly 0) sits on that floor line,
labelled "≈0". Painted with QPainter: a handful of points needs no chart library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.theme import series

KL_FLOOR = 1e-12  # the lowest floor the axis goes down to


@dataclass(frozen=True)
class ChartPoint:
    label: str
    kv_mib: float
    mean_kl: float | None  # None: broken (infinite or NaN)
    chosen: bool = False
    matched: bool = False  # the type matched to the weights


def _nice_step(span: float, ticks: int = 4) -> float:
    raw = span / max(1, ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


class QualityChart(QWidget):
    """Scatter of ChartPoints; call :meth:`set_points` to repaint."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[ChartPoint] = []
        self.setMinimumHeight(190)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def set_points(self, points: list[ChartPoint]) -> None:
        self.points = list(points)
        self.update()

    # ------------------------------------------------------------------ geometry
    def _ranges(self) -> tuple[float, float, float, float]:
        xs = [p.kv_mib for p in self.points] or [0.0, 1.0]
        x0, x1 = 0.0, max(xs) * 1.08 or 1.0
        kls = [p.mean_kl for p in self.points if p.mean_kl is not None and p.mean_kl > KL_FLOOR]
        y1 = float(max(math.ceil(math.log10(max(kls, default=1e-3)) + 0.05), -3))
        y0 = float(math.floor(math.log10(min(kls, default=1e-6))) - 1)
        return x0, x1, min(y0, y1 - 2), y1

    def _y(self, kl: float | None, plot: QRectF, y0: float, y1: float) -> float:
        v = y1 if kl is None else math.log10(max(kl, 10.0**y0))
        v = min(max(v, y0), y1)
        return plot.bottom() - (v - y0) / (y1 - y0) * plot.height()

    # ------------------------------------------------------------------ painting
    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802  (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fg = pal.color(pal.ColorRole.WindowText)
        grid = QColor(fg)
        grid.setAlpha(40)
        small = QFont(self.font())
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.85))
        p.setFont(small)
        fm = p.fontMetrics()
        plot = QRectF(fm.horizontalAdvance("1e-10") + 14, 10, 0, 0)
        plot.setRight(self.width() - 12)
        plot.setBottom(self.height() - 2 * fm.height() - 8)
        if plot.width() < 40 or plot.height() < 40:
            p.end()
            return
        x0, x1, y0, y1 = self._ranges()
        to_x = lambda v: plot.left() + (v - x0) / (x1 - x0) * plot.width()  # noqa: E731
        # y grid: one line per decade
        for d in range(int(y0), int(y1) + 1):
            y = self._y(10.0**d, plot, y0, y1)
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(fg)
            text = "≈0" if d == int(y0) else f"1e{d}"
            p.drawText(
                QRectF(0, y - fm.height() / 2, plot.left() - 6, fm.height()),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                text,
            )
        step = _nice_step(x1 - x0)
        v = 0.0
        while v <= x1 + 1e-9:
            x = to_x(v)
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.setPen(fg)
            p.drawText(
                QRectF(x - 40, plot.bottom() + 2, 80, fm.height()), Qt.AlignmentFlag.AlignHCenter, f"{v:g}"
            )
            v += step
        p.drawText(
            QRectF(plot.left(), plot.bottom() + fm.height() + 4, plot.width(), fm.height()),
            Qt.AlignmentFlag.AlignHCenter,
            "KV cache (MiB) →   ·   ↑ mean KL divergence vs f32",
        )
        p.setPen(QPen(fg, 1))
        p.drawRect(plot)
        for pt in self.points:
            self._draw_point(p, pt, QPointF(to_x(pt.kv_mib), self._y(pt.mean_kl, plot, y0, y1)), fg)
        p.end()

    def _draw_point(self, p: QPainter, pt: ChartPoint, at: QPointF, fg: QColor) -> None:
        color = series("chosen") if pt.chosen else series("failed") if pt.mean_kl is None else series("point")
        radius = 5.5 if pt.chosen else 4.0
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(color)
        p.drawEllipse(at, radius, radius)
        if pt.matched:
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(series("ok"), 2))
            p.drawEllipse(at, radius + 4, radius + 4)
        p.setPen(fg)
        label = pt.label + (" ★" if pt.matched else "")
        p.drawText(at + QPointF(radius + 6, 4), label)
