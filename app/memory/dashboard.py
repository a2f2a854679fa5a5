"""The dashboard: where memory goes now, what was predicted against what was measured, how full
each sequence's KV cache is, and how fast tokens come.

The panel only displays what its slots are given: telemetry is sampled on a worker thread
(``engine.runtime.telemetry.TelemetrySampler``) and reaches these slots through a bridge's queued
signals, so nothing here blocks the GUI thread. Repaints go through ``update()``, which Qt
coalesces; the speed chart, fed once per token, repaints at most about 15 times a second.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QLabel,
    QScrollArea,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.memory.dashboard_widgets import (
    COMPONENT_COLORS,
    OTHERS,
    THIS_APP,
    Legend,
    Segment,
    SequenceBars,
    SpeedChart,
    StackedBar,
)
from app.memory.plan_table import FULL_ERROR, PlanTable
from engine.core.memory_types import COMPONENTS, NOT_LOGGED, MemoryPlan
from engine.core.units import format_bytes
from engine.runtime.telemetry import GpuSnapshot, HostSnapshot, TelemetrySnapshot

SPEED_POINTS = 120
#: The measured cell of a component llama.cpp does not log (the CUDA driver's share): no
#: measurement, so no error either; the total's error leaves it out of the prediction too.
NOT_LOGGED_TEXT = "not logged"
SPEC_OFF = "Off: choose a draft model or n-gram lookup beside the model."
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def gpu_bar_data(gpu: GpuSnapshot) -> tuple[str, list[Segment], str, str]:
    """Title, segments, caption and tooltip of one GPU's bar."""
    estimated = gpu.attribution != "per-process"
    segments = [
        Segment("this app (estimated)" if estimated else "this app", gpu.this_app_bytes, THIS_APP),
        Segment("other processes", gpu.other_processes_bytes, OTHERS),
        Segment("free", gpu.free_bytes, None),
    ]
    live = [f"{format_bytes(gpu.total_bytes)}"]
    live += [f"{gpu.utilization_pct} %"] if gpu.utilization_pct is not None else []
    live += [f"{gpu.temperature_c} °C"] if gpu.temperature_c is not None else []
    live += [f"{gpu.power_w:.0f} W"] if gpu.power_w is not None else []
    tip = [f"{s.label}: {format_bytes(s.value)}" for s in segments]
    if gpu.reserved_bytes:
        tip.append(f"other processes include {format_bytes(gpu.reserved_bytes)} reserved by the driver")
    tip += [gpu.attribution_note] if gpu.attribution_note else []
    tip.append(f"{gpu.uuid} at PCI {gpu.pci_bus_id}" if gpu.pci_bus_id else gpu.uuid)
    return f"{gpu.device_name} · {gpu.name}", segments, " · ".join(live), "\n".join(tip)


def host_bar_data(host: HostSnapshot) -> tuple[list[Segment], str]:
    """Segments and caption of the host RAM bar. RSS counts resident pages of a mapped model
    file, which the system also counts as available cache; clamp so the bar sums to the total."""
    ours = min(host.this_app_rss_bytes, host.used_bytes)
    return (
        [
            Segment("this app", ours, THIS_APP),
            Segment("other processes", host.used_bytes - ours, OTHERS),
            Segment("available", host.available_bytes, None),
        ],
        f"{format_bytes(host.total_bytes)} · CPU {host.cpu_pct:.0f} %",
    )


def error_text(predicted: int, measured: int) -> str:
    """Predicted minus measured, in bytes and as a share of the measured value."""
    diff = predicted - measured
    if measured <= 0:
        return format_bytes(diff, signed=True)
    pct = f"{100 * diff / measured:+.1f}".replace("-", "−")  # the same minus as format_bytes
    return f"{format_bytes(diff, signed=True)} ({pct} %)"


def _cell(text: str, bold: bool = False, right: bool = False, device: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if right:
        item.setTextAlignment(_RIGHT)
    if bold:
        font = item.font()
        font.setBold(True)
        item.setFont(font)
    if device:
        item.setData(Qt.ItemDataRole.UserRole, device)
    return item


def _discard(widget: QWidget) -> None:
    """Hide now (deleteLater waits for the event loop) and delete soon; layouts forget it."""
    widget.hide()
    widget.setParent(None)  # type: ignore[call-overload]
    widget.deleteLater()


class DashboardPanel(QWidget):
    """Live memory per device, predicted against measured plans, KV occupancy and speed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        body = QWidget()
        self._layout = QVBoxLayout(body)
        self._layout.setContentsMargins(4, 4, 4, 4)
        # memory now
        self.gpu_bars: list[StackedBar] = []
        self.host_bar = StackedBar()
        self.reason_label = self._note_label()
        self.notes_label = self._note_label()
        self._gpu_box = QVBoxLayout()
        self._section("Memory now", self._gpu_box, self.host_bar, self.reason_label, self.notes_label)
        # predicted vs measured
        self.plan_legend = Legend([(c, COMPONENT_COLORS[c]) for c in COMPONENTS])
        self.plan_placeholder = self._note_label("No memory plan yet: pick a model and settings.")
        self.plan_bars: list[StackedBar] = []
        self._plan_box = QVBoxLayout()
        self.plan_rows: list[tuple[str, str, str, str, str]] = []
        self.plan_table = PlanTable(0, 4)
        self.plan_table.setHorizontalHeaderLabels(["", "Predicted", "Measured", "Error"])
        self.plan_table.horizontalHeaderItem(3).setToolTip(
            "predicted − measured, and that as a share of measured"
        )
        self.plan_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.plan_table.verticalHeader().hide()
        self.plan_table.verticalHeader().setMinimumSectionSize(1)
        self.plan_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.draft_plan: MemoryPlan | None = None  # speculative decoding's draft, its own bars
        self.draft_bars: list[StackedBar] = []
        self._draft_box = QVBoxLayout()
        self._predicted: MemoryPlan | None = None
        self.compared: tuple[MemoryPlan | None, MemoryPlan | None] = (None, None)
        self._section(
            "Predicted vs measured",
            self.plan_placeholder,
            self.plan_legend,
            self._plan_box,
            self._draft_box,
            self.plan_table,
        )
        # KV occupancy
        self.kv_label = self._note_label("No context yet.")
        self.kv_bars = SequenceBars()
        self._section("Cache per sequence", self.kv_label, self.kv_bars)
        # speed
        self.speed = SpeedChart(SPEED_POINTS)
        self._section("Generation speed", self.speed)
        self.spec_label = self._note_label(SPEC_OFF)
        self._section("Speculative decoding", self.spec_label)
        self._layout.addStretch(1)

        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.show_plans(None, None)
        self.show_kv([], 0, "kv")

    def _note_label(self, text: str = "") -> QLabel:
        label = QLabel(text)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _section(self, title: str, *parts: QWidget | QVBoxLayout) -> None:
        box = QGroupBox(title)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(8, 8, 8, 8)
        for part in parts:
            if isinstance(part, QVBoxLayout):
                layout.addLayout(part)
            else:
                layout.addWidget(part)
        self._layout.addWidget(box)

    # ------------------------------------------------------------------ slots
    @Slot(object)
    def show_snapshot(self, snap: TelemetrySnapshot) -> None:
        """One bar per GPU llama.cpp can use and one for host RAM; the reason when no GPU."""
        while len(self.gpu_bars) > len(snap.gpus):
            _discard(self.gpu_bars.pop())
        while len(self.gpu_bars) < len(snap.gpus):
            bar = StackedBar()
            self._gpu_box.addWidget(bar)
            self.gpu_bars.append(bar)
        for bar, gpu in zip(self.gpu_bars, snap.gpus):
            title, segments, caption, tip = gpu_bar_data(gpu)
            bar.set_data(title, segments, gpu.total_bytes, caption, tooltip=tip)
        segments, caption = host_bar_data(snap.host)
        self.host_bar.set_data("Host RAM", segments, snap.host.total_bytes, caption)
        reason = snap.gpu_unavailable_reason
        self.reason_label.setText(f"No GPU view: {reason}." if reason else "")
        self.reason_label.setVisible(bool(reason))
        notes = list(
            dict.fromkeys(list(snap.notes) + [g.attribution_note for g in snap.gpus if g.attribution_note])
        )
        self.notes_label.setText("\n".join(notes))
        self.notes_label.setVisible(bool(notes))

    @Slot(object, object)
    def show_plans(
        self, predicted: MemoryPlan | None, measured: MemoryPlan | None, target: MemoryPlan | None = None
    ) -> None:
        """Two bars per device (predicted, measured) on one scale, and a table of the error.
        ``target``: the target's own plan where ``predicted`` also holds its drafter's (the
        drafter's bars add themselves to the target's)."""
        plans = [p for p in (predicted, measured) if p is not None]
        devices = list(dict.fromkeys(d for p in plans for d in p.devices()))
        self._predicted = target if target is not None else predicted
        self.compared = (predicted, measured)  # what the table sets against each other
        both = target is not None and predicted is not target
        for bar in self.plan_bars:
            _discard(bar)
        self.plan_bars = []
        for device in devices:
            scale = max(p.bytes_for(device) for p in plans)
            for plan in plans:
                segments = [
                    Segment(c, plan.bytes_for(device, c), COMPONENT_COLORS[c])
                    for c in COMPONENTS
                    if plan.bytes_for(device, c)
                ]
                who = (
                    "measured"
                    if plan is measured
                    else f"predicted ({plan.source}{', target + drafter' if both else ''})"
                )
                bar = StackedBar()
                bar.set_data(
                    f"{device} · {who}",
                    segments,
                    scale,
                    format_bytes(plan.bytes_for(device)),
                    show_values=False,
                )
                self._plan_box.addWidget(bar)
                self.plan_bars.append(bar)
        self._fill_table(predicted, measured, devices)
        for widget in (self.plan_legend, self.plan_table):
            widget.setVisible(bool(plans))
        self.plan_placeholder.setVisible(not plans)

    def _fill_table(
        self, predicted: MemoryPlan | None, measured: MemoryPlan | None, devices: list[str]
    ) -> None:
        """Rows of (device, component, predicted, measured, error) in ``plan_rows``; the table
        shows each device as a heading row over its components, to stay narrow."""
        self.plan_rows = []
        for device in devices:
            for comp in (*COMPONENTS, None):
                pred = predicted.bytes_for(device, comp) if predicted else None
                meas = measured.bytes_for(device, comp) if measured else None
                if comp is not None and not pred and not meas:
                    continue
                logged_only = measured is not None and measured.source == "measured"
                unlogged = comp in NOT_LOGGED and logged_only
                # the total's error compares what both sides count: the log has no driver memory
                compared = pred
                if comp is None and pred is not None and predicted is not None and logged_only:
                    compared = pred - sum(predicted.bytes_for(device, c) for c in NOT_LOGGED)
                self.plan_rows.append(
                    (
                        device,
                        comp or "total",
                        "" if pred is None else format_bytes(pred),
                        NOT_LOGGED_TEXT if unlogged else "" if meas is None else format_bytes(meas),
                        "" if compared is None or meas is None or unlogged else error_text(compared, meas),
                    )
                )
        table = self.plan_table
        table.clearSpans()
        table.setRowCount(len(self.plan_rows) + len(devices))
        r = 0
        for device, comp, *values in self.plan_rows:
            if r == 0 or table.item(r - 1, 0).data(Qt.ItemDataRole.UserRole) != device:
                table.setItem(r, 0, _cell(device, bold=True, device=device))
                table.setSpan(r, 0, 1, 4)
                r += 1
            table.setItem(r, 0, _cell(f"  {comp}", bold=comp == "total", device=device))
            for c, text in enumerate(values, start=1):
                table.setItem(r, c, _cell(text, bold=comp == "total", right=True))
            table.item(r, 3).setData(FULL_ERROR, values[2])
            r += 1
        table.fit_rows()

    @Slot(list, int, str)
    def show_kv(self, cells_used: list[int], capacity: int, kind: str) -> None:
        """A bar per sequence; recurrent models hold a fixed-size state per sequence instead."""
        n = len(cells_used)
        if not n:
            self.kv_label.setText("No context yet.")
        elif kind == "recurrent":
            self.kv_label.setText(
                f"Recurrent state: {n} sequence{'s' * (n != 1)}, one fixed-size "
                f"state each (it does not grow with the context)."
            )
        else:
            total = sum(cells_used)
            self.kv_label.setText(
                f"KV cache: {n} sequence{'s' * (n != 1)}, {capacity:,} cells each; {total:,} cells in use."
            )
        self.kv_bars.set_data(cells_used, capacity, kind)
        self.kv_bars.setVisible(bool(n))

    @Slot(float, float)
    def add_speed(self, t: float, tokens_per_s: float) -> None:
        """Append a point; the chart keeps the last ``SPEED_POINTS``."""
        self.speed.add(t, tokens_per_s)

    def clear_speed(self) -> None:
        self.speed.clear()

    # ------------------------------------------------------------------ speculative decoding
    @Slot(object)
    def show_draft_plan(self, plan: MemoryPlan | None, measured: MemoryPlan | None = None) -> None:
        """The draft model at the target's context: one bar per device under the target's, and
        under it what llama.cpp logged for the drafting context (``measured``: the MTP heads'
        context, created with the model; their weights are in the model's own buffer)."""
        self.draft_plan = plan
        for bar in self.draft_bars:
            _discard(bar)
        self.draft_bars = []
        plans = [p for p in (plan, measured) if p is not None]
        for device in dict.fromkeys(d for p in plans for d in p.devices()):
            target = self._predicted.bytes_for(device) if self._predicted is not None else 0
            scale = max([target] + [p.bytes_for(device) for p in plans])
            for one in plans:
                mine = one.bytes_for(device)
                segments = [
                    Segment(c, one.bytes_for(device, c), COMPONENT_COLORS[c])
                    for c in COMPONENTS
                    if one.bytes_for(device, c)
                ]
                who = "measured at load" if one is measured else f"predicted, {one.n_ctx:,}-token context"
                bar = StackedBar()
                bar.set_data(
                    f"{device} · drafter ({who})",
                    segments,
                    scale,
                    format_bytes(mine)
                    + (f"; with the target {format_bytes(mine + target)}" if target and one is plan else ""),
                    show_values=False,
                )
                self._draft_box.addWidget(bar)
                self.draft_bars.append(bar)

    @Slot(str)
    def show_speculation(self, text: str) -> None:
        """Acceptance, mean accepted length, counts and speed-up (app.bridges.draft_picker's text)."""
        self.spec_label.setText(text or SPEC_OFF)
