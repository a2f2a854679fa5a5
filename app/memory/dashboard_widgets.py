"""Painted pieces of the dashboard: a stacked bar, a legend, per-sequence bars, a sparkline.

They are drawn with QPainter rather than QtCharts: QtCharts is a large optional module that
bundles often leave out, and these shapes are a few rectangles and one polyline. Hues are fixed
and of middle lightness so they read on light and dark palettes alike; text, tracks and
backgrounds come from the palette, so a theme change needs nothing but a repaint.
Each widget only stores what it is given and paints it: no widget here computes or waits.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPalette, QPen, QResizeEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.theme import series
from engine.core.memory_types import COMPONENTS
from engine.core.units import format_bytes

COMPONENT_COLORS = {name: series(name) for name in COMPONENTS}
THIS_APP = series("this_app")
OTHERS = series("others")
SPEED = series("speed")
BAR_H = 18
SWATCH = 10
GAP = 4


@dataclass(frozen=True)
class Segment:
    """A part of a bar; ``color`` None is the empty track (free memory)."""

    label: str
    value: int
    color: QColor | None


#: Seconds without a speed sample after which the chart breaks its line: replies are streamed
#: at several samples a second, so a longer silence is the model idling, not a slow token.
IDLE_GAP_S = 3.0


def idle_split(points: list[tuple[float, float]], gap: float = IDLE_GAP_S) -> list[list[tuple[float, float]]]:
    """The samples as runs of generation, split wherever ``gap`` seconds passed without one."""
    runs: list[list[tuple[float, float]]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= gap:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def _text_color(widget: QWidget, alpha: int = 255) -> QColor:
    color = QColor(widget.palette().color(QPalette.ColorRole.WindowText))
    color.setAlpha(alpha)
    return color


def _on(fill: QColor) -> QColor:
    """Black or white text, whichever is legible on ``fill``."""
    return QColor(Qt.GlobalColor.black) if fill.lightnessF() > 0.6 else QColor(Qt.GlobalColor.white)


def _track(painter: QPainter, widget: QWidget, rect: QRectF) -> None:
    painter.setPen(QPen(_text_color(widget, 90), 1))
    painter.setBrush(_text_color(widget, 22))
    painter.drawRoundedRect(rect, 3, 3)


def _flow(fm: QFontMetrics, texts: Sequence[str], width: int) -> list[list[tuple[int, int]]]:
    """Legend items laid out in rows that fit ``width``: [(item index, x), ...] per row."""
    rows: list[list[tuple[int, int]]] = [[]]
    x = 0
    for i, text in enumerate(texts):
        w = SWATCH + GAP + fm.horizontalAdvance(text) + 3 * GAP
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0
        rows[-1].append((i, x))
        x += w
    return rows


def _draw_legend(
    painter: QPainter, widget: QWidget, items: Sequence[tuple[str, QColor | None]], top: int, width: int
) -> None:
    fm = painter.fontMetrics()
    for row, placed in enumerate(_flow(fm, [t for t, _ in items], width)):
        y = top + row * (fm.height() + 2)
        for i, x in placed:
            text, color = items[i]
            box = QRectF(x + 0.5, y + (fm.height() - SWATCH) / 2 + 0.5, SWATCH, SWATCH)
            if color is None:
                _track(painter, widget, box)
            else:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(color)
                painter.drawRect(box)
            painter.setPen(_text_color(widget))
            painter.drawText(x + SWATCH + GAP, y + fm.ascent(), text)


class StackedBar(QWidget):
    """A title, a caption on the right, one horizontal bar of segments and a legend of values.

    ``scale`` is the bytes the full width stands for (a GPU's total, or the larger of two plans
    so both bars of a device share one scale).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = ""
        self.caption = ""
        self.segments: list[Segment] = []
        self.scale = 0
        self.show_values = True
        sp = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)

    def set_data(
        self,
        title: str,
        segments: Sequence[Segment],
        scale: int,
        caption: str = "",
        show_values: bool = True,
        tooltip: str = "",
    ) -> None:
        self.title, self.caption, self.segments = title, caption, list(segments)
        self.scale, self.show_values = max(0, scale), show_values
        # the title first: a narrow dock elides it ("CPU · drafter (predict…")
        head = f"{title}: {caption}" if caption else title
        parts = [head] + [f"{s.label}: {format_bytes(s.value)}" for s in self.segments]
        self.setToolTip(tooltip or "\n".join(parts))
        self.updateGeometry()
        self.update()

    def legend_items(self) -> list[tuple[str, QColor | None]]:
        return [(f"{s.label} {format_bytes(s.value)}", s.color) for s in self.segments]

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        fm = self.fontMetrics()
        rows = len(_flow(fm, [t for t, _ in self.legend_items()], width)) if self.show_values else 0
        return fm.height() + GAP + BAR_H + (GAP + rows * (fm.height() + 2) if rows else 0) + 2

    def sizeHint(self) -> QSize:
        return QSize(360, self.heightForWidth(360))

    def minimumSizeHint(self) -> QSize:
        return QSize(160, self.heightForWidth(160))

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm, w = p.fontMetrics(), self.width()
        bold = p.font()
        bold.setBold(True)
        cap_w = fm.horizontalAdvance(self.caption)
        p.setPen(_text_color(self))
        p.drawText(w - cap_w, fm.ascent(), self.caption)
        p.setFont(bold)
        p.drawText(
            0,
            fm.ascent(),
            QFontMetrics(bold).elidedText(
                self.title, Qt.TextElideMode.ElideRight, max(0, w - cap_w - 2 * GAP)
            ),
        )
        p.setFont(self.font())
        bar = QRectF(0.5, fm.height() + GAP + 0.5, w - 1, BAR_H)
        _track(p, self, bar)
        x = bar.left()
        for seg in self.segments:
            if seg.color is None or self.scale <= 0 or seg.value <= 0:
                continue
            seg_w = min(bar.right() - x, bar.width() * seg.value / self.scale)
            rect = QRectF(x, bar.top(), seg_w, bar.height())
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(seg.color)
            p.drawRect(rect)
            text = format_bytes(seg.value)
            if fm.horizontalAdvance(text) + 2 * GAP < seg_w:
                p.setPen(_on(seg.color))
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
            x += seg_w
        if self.show_values:
            _draw_legend(p, self, self.legend_items(), int(bar.bottom()) + GAP + 1, w)
        p.end()


class Legend(QWidget):
    """Colour keys that wrap to the width, for bars drawn without their own values."""

    def __init__(
        self, items: Sequence[tuple[str, QColor | None]] = (), parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.items = list(items)
        sp = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        fm = self.fontMetrics()
        return len(_flow(fm, [t for t, _ in self.items], width)) * (fm.height() + 2)

    def sizeHint(self) -> QSize:
        return QSize(360, self.heightForWidth(360))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        """Ask for the wrapped height: a scroll area's layout never asks `heightForWidth`, so at
        a narrow width the second line (the last keys) was cut off."""
        super().resizeEvent(event)
        self.setMinimumHeight(self.heightForWidth(self.width()))

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        _draw_legend(p, self, self.items, 0, self.width())
        p.end()


class SequenceBars(QWidget):
    """One bar per sequence: KV cells used of the capacity, or whether a recurrent state is held.

    A recurrent model keeps one fixed-size state per sequence however long it is, so its rows
    say "state" rather than counting cells.
    """

    ROW = 16

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.used: list[int] = []
        self.capacity = 0
        self.kind = "kv"
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_data(self, used: Sequence[int], capacity: int, kind: str) -> None:
        self.used, self.capacity, self.kind = [max(0, int(u)) for u in used], max(0, capacity), kind
        self.setFixedHeight(max(1, len(self.used) * (self.ROW + GAP)))
        self.update()

    def row_text(self, i: int) -> str:
        used, cap = self.used[i], self.capacity
        if self.kind == "recurrent":
            held = "state held" if used else "no state"
            return held if cap <= 1 else f"{held} ({used:,} / {cap:,})"
        pct = f" ({100 * used / cap:.0f} %)" if cap else ""
        return f"{used:,} / {cap:,} cells{pct}"

    def sizeHint(self) -> QSize:
        return QSize(360, max(1, len(self.used) * (self.ROW + GAP)))

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = p.fontMetrics()
        label_w = fm.horizontalAdvance(f"seq {max(len(self.used) - 1, 0)}") + 2 * GAP
        texts = [self.row_text(i) for i in range(len(self.used))]
        text_w = max((fm.horizontalAdvance(t) for t in texts), default=0) + 2 * GAP
        bar_w = max(20, self.width() - label_w - text_w)
        color = COMPONENT_COLORS["recurrent" if self.kind == "recurrent" else "kv"]
        for i, used in enumerate(self.used):
            top = i * (self.ROW + GAP)
            baseline = top + (self.ROW + fm.ascent() - fm.descent()) / 2
            p.setPen(_text_color(self))
            p.drawText(QPointF(0, baseline), f"seq {i}")
            bar = QRectF(label_w + 0.5, top + 0.5, bar_w - 1, self.ROW - 1)
            _track(p, self, bar)
            if self.capacity and used:
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(color)
                p.drawRect(
                    QRectF(bar.left(), bar.top(), bar.width() * min(1.0, used / self.capacity), bar.height())
                )
            p.setPen(_text_color(self))
            p.drawText(QPointF(label_w + bar_w + GAP, baseline), texts[i])
        p.end()


class SpeedChart(QWidget):
    """Tokens per second over the last ``cap`` points, with the current and peak values.

    Points may arrive once per token; the data is kept at once but repaints are held to about
    15 a second, which is as often as anyone can read a moving line.
    """

    REPAINT_MS = 66

    def __init__(self, cap: int = 120, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: collections.deque[tuple[float, float]] = collections.deque(maxlen=cap)
        self._repaint = QTimer(self, singleShot=True, interval=self.REPAINT_MS)
        self._repaint.timeout.connect(self.update)
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add(self, t: float, tokens_per_s: float) -> None:
        self.points.append((float(t), max(0.0, float(tokens_per_s))))
        if not self._repaint.isActive():
            self._repaint.start()

    def clear(self) -> None:
        self.points.clear()
        self.update()

    @property
    def current(self) -> float | None:
        return self.points[-1][1] if self.points else None

    @property
    def peak(self) -> float | None:
        return max(v for _, v in self.points) if self.points else None

    def summary(self) -> str:
        if not self.points:
            return "no generation yet"
        return f"now {self.current:.1f} tok/s · peak {self.peak:.1f} tok/s"

    def sizeHint(self) -> QSize:
        return QSize(360, 110)

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = p.fontMetrics()
        p.setPen(_text_color(self))
        p.drawText(0, fm.ascent(), self.summary())
        plot = QRectF(
            0.5, fm.height() + GAP + 0.5, self.width() - 1, self.height() - 2 * fm.height() - 2 * GAP - 1
        )
        _track(p, self, plot)
        if len(self.points) >= 1 and plot.height() > 4:
            t0, t1 = self.points[0][0], self.points[-1][0]
            top = (self.peak or 0.0) * 1.15 or 1.0
            span = (t1 - t0) or 1.0

            def at(t: float, v: float) -> QPointF:
                x = plot.left() + plot.width() * ((t - t0) / span if len(self.points) > 1 else 1.0)
                return QPointF(x, plot.bottom() - plot.height() * v / top)

            line = QPainterPath()
            fill = QColor(SPEED)
            fill.setAlpha(60)
            p.setPen(Qt.PenStyle.NoPen)
            for run in idle_split(list(self.points)):  # no line across the time nothing ran
                segment = QPainterPath(at(*run[0]))
                for t, v in run[1:]:
                    segment.lineTo(at(t, v))
                line.addPath(segment)
                filled = QPainterPath(segment)
                filled.lineTo(QPointF(at(run[-1][0], 0).x(), plot.bottom()))
                filled.lineTo(QPointF(at(run[0][0], 0).x(), plot.bottom()))
                p.fillPath(filled, fill)
            p.setPen(QPen(SPEED, 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(line)
            p.setPen(QPen(_text_color(self, 40), 1, Qt.PenStyle.DashLine))
            for frac in (0.25, 0.5, 0.75):  # light guides, so a level can be read off the line
                y = plot.bottom() - plot.height() * frac
                p.drawLine(QPointF(plot.left() + 1, y), QPointF(plot.right() - 1, y))
            p.setPen(_text_color(self, 160))
            axis = f"0 – {top:.0f} tok/s"
            base = self.height() - fm.descent()
            p.drawText(QPointF(self.width() - fm.horizontalAdvance(axis), base), axis)
            p.drawText(QPointF(0, base), f"last {span:.0f} s" if len(self.points) > 1 else "")
        p.end()
