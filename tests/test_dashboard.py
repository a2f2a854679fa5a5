"""The dashboard panel, driven through its slots as the telemetry bridge and runtime drive it."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from app.memory.dashboard import NOT_LOGGED_TEXT, SPEED_POINTS, DashboardPanel, error_text
from engine.core.memory_types import Allocation, GiB, MemoryPlan, MiB, PlanSettings
from engine.core.units import format_bytes
from engine.runtime.telemetry import GpuSnapshot, HostSnapshot, Telemetry, TelemetrySnapshot

HOST = HostSnapshot(
    total_bytes=64 * GiB,
    available_bytes=40 * GiB,
    used_bytes=24 * GiB,
    this_app_rss_bytes=3 * GiB,
    cpu_pct=12.5,
)


def gpu(
    index: int, this_app: int, others: int, total: int = 80 * GiB, name: str = "NVIDIA H100 80GB HBM3"
) -> GpuSnapshot:
    used = this_app + others
    return GpuSnapshot(
        index,
        name,
        f"GPU-{index:04d}",
        total,
        used,
        total - used,
        this_app,
        others,
        utilization_pct=87,
        temperature_c=61,
        power_w=412.0,
        pci_bus_id=f"00000000:{index + 1:02X}:00.0",
        reserved_bytes=480 * MiB,
    )


def plan(source: str, scale: float) -> MemoryPlan:
    parts = {
        "CUDA0": {"weights": 7.6 * GiB, "kv": 4 * GiB, "compute": 0.55 * GiB, "output": 0.25 * GiB},
        "CPU": {"weights": 0.4 * GiB, "compute": 0.02 * GiB},
    }
    allocs = tuple(
        Allocation(c, d, int(b * (scale if c != "weights" else 1.0)))
        for d, comps in parts.items()
        for c, b in comps.items()
    )
    return MemoryPlan(source, PlanSettings(), 32768, 32768, 32768, 0, allocs)  # type: ignore[arg-type]


@pytest.fixture
def panel(qtbot):
    widget = DashboardPanel()
    qtbot.addWidget(widget)
    widget.resize(520, 1100)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_host_only_snapshot_shows_the_reason(panel, qtbot):
    snap = Telemetry().snapshot([])  # this machine, as it is
    if snap.gpus:
        pytest.skip("this machine has a GPU view")
    panel.show_snapshot(snap)
    assert panel.gpu_bars == []
    assert panel.reason_label.isVisible()
    assert "NVML not found (no NVIDIA driver)" in panel.reason_label.text()
    assert panel.host_bar.title == "Host RAM"
    assert [s.label for s in panel.host_bar.segments] == ["this app", "other processes", "available"]
    assert sum(s.value for s in panel.host_bar.segments) == snap.host.total_bytes


def test_two_gpus_show_two_bars(panel):
    snap = TelemetrySnapshot(time.time(), HOST, (gpu(0, 14 * GiB, 2 * GiB), gpu(1, 9 * GiB, 0)), None)
    panel.show_snapshot(snap)
    assert len(panel.gpu_bars) == 2 and not panel.reason_label.isVisible()
    first = panel.gpu_bars[0]
    assert first.title == "CUDA0 · NVIDIA H100 80GB HBM3"
    assert [(s.label, s.value) for s in first.segments] == [
        ("this app", 14 * GiB),
        ("other processes", 2 * GiB),
        ("free", 64 * GiB),
    ]
    assert "87 %" in first.caption and "61 °C" in first.caption and "412 W" in first.caption
    assert "reserved by the driver" in first.toolTip()
    # a GPU goes away (CUDA_VISIBLE_DEVICES changed, say): its bar goes at once
    gone = panel.gpu_bars[1]
    panel.show_snapshot(TelemetrySnapshot(time.time(), HOST, (gpu(0, GiB, 0),), None))
    assert len(panel.gpu_bars) == 1 and not gone.isVisible()
    panel.show_snapshot(TelemetrySnapshot(time.time(), HOST, (), "no NVIDIA GPU found"))
    assert panel.gpu_bars == [] and panel.reason_label.text() == "No GPU view: no NVIDIA GPU found."


def test_estimated_attribution_is_labelled_and_explained(panel):
    est = GpuSnapshot(
        0,
        "NVIDIA H100 80GB HBM3",
        "GPU-0",
        80 * GiB,
        10 * GiB,
        70 * GiB,
        9 * GiB,
        GiB,
        None,
        None,
        None,
        attribution="difference",
        attribution_note="growth since before the runtime started",
    )
    panel.show_snapshot(TelemetrySnapshot(time.time(), HOST, (est,), None))
    assert panel.gpu_bars[0].segments[0].label == "this app (estimated)"
    assert panel.notes_label.isVisible() and "growth" in panel.notes_label.text()


def test_plans_show_bars_and_the_error(panel):
    predicted, measured = plan("analytic", 1.0), plan("measured", 1.05)
    panel.show_plans(predicted, measured)
    assert len(panel.plan_bars) == 4  # CUDA0 and CPU, predicted and measured each
    assert panel.plan_bars[0].title == "CUDA0 · predicted (analytic)"
    assert panel.plan_bars[1].title == "CUDA0 · measured"
    assert [s.label for s in panel.plan_bars[0].segments] == ["weights", "kv", "compute", "output"]
    rows = {(device, comp): error for device, comp, _, _, error in panel.plan_rows}
    table = panel.plan_table
    shown = [
        [table.item(r, c).text() if table.item(r, c) else "" for c in range(4)]
        for r in range(table.rowCount())
    ]
    assert shown[0][0] == "CUDA0" and table.columnSpan(0, 0) == 4  # device heading row
    assert shown[2] == ["  kv", "4.00 GiB", "4.20 GiB", rows[("CUDA0", "kv")]]
    assert rows[("CUDA0", "weights")] == "±0 MiB (+0.0 %)"
    assert rows[("CUDA0", "kv")].endswith("(−4.8 %)")  # 4 GiB predicted, 4.2 GiB measured
    assert "%" in rows[("CUDA0", "total")] and ("CPU", "kv") not in rows
    # with only a prediction there is no error to show
    panel.show_plans(predicted, None)
    assert len(panel.plan_bars) == 2
    assert all(error == "" for *_, error in panel.plan_rows)
    panel.show_plans(None, None)
    assert panel.plan_bars == [] and panel.plan_placeholder.isVisible()


def test_the_driver_memory_llama_cpp_does_not_log_reads_not_logged(panel):
    """The CUDA driver's share is predicted, never in llama.cpp's log: its measured cell says so
    rather than 0, and it has no error of its own; the total's error compares what both sides
    count, so an exact plan reads ±0 there too."""
    driver = Allocation("driver", "CUDA0", int(4.67 * MiB), "CUDA driver (not in llama.cpp's log): …")
    predicted, measured = plan("analytic", 1.0), plan("measured", 1.0)
    predicted = dataclasses.replace(predicted, allocations=(*predicted.allocations, driver))
    panel.show_plans(predicted, measured)
    rows = {(device, comp): (pred, meas, error) for device, comp, pred, meas, error in panel.plan_rows}
    assert rows[("CUDA0", "driver")] == ("4.7 MiB", NOT_LOGGED_TEXT, "")
    assert rows[("CUDA0", "total")][2].startswith("±0 MiB")
    assert [s.label for s in panel.plan_bars[0].segments][-1] == "driver"
    assert "driver" not in [s.label for s in panel.plan_bars[1].segments]


def test_error_text():
    assert error_text(110 * MiB, 100 * MiB) == "+10.0 MiB (+10.0 %)"
    assert error_text(3 * GiB, 4 * GiB) == "−1.00 GiB (−25.0 %)"
    assert error_text(5 * MiB, 0) == "+5.0 MiB"
    assert format_bytes(0) == "0 MiB"


def test_kv_occupancy(panel):
    panel.show_kv([1200, 4096, 0], 4096, "kv")
    assert panel.kv_bars.isVisible()
    assert panel.kv_bars.row_text(0) == "1,200 / 4,096 cells (29 %)"
    assert panel.kv_bars.row_text(1).endswith("(100 %)")
    assert "3 sequences" in panel.kv_label.text() and "5,296 cells in use" in panel.kv_label.text()
    panel.show_kv([1, 0], 1, "recurrent")
    assert panel.kv_bars.row_text(0) == "state held" and panel.kv_bars.row_text(1) == "no state"
    assert "state" in panel.kv_label.text() and "cells" not in panel.kv_label.text()
    panel.show_kv([], 0, "kv")
    assert not panel.kv_bars.isVisible()


def test_speed_keeps_at_most_the_cap(panel):
    for i in range(200):
        panel.add_speed(float(i) * 0.25, 40.0 + (i % 7))
    assert len(panel.speed.points) == SPEED_POINTS == 120
    assert panel.speed.points[0][0] == 80 * 0.25  # the oldest were dropped
    assert panel.speed.current == 40.0 + 199 % 7 and panel.speed.peak == 46.0
    assert "now 43.0 tok/s" in panel.speed.summary() and "peak 46.0" in panel.speed.summary()


def fill(panel: DashboardPanel) -> None:
    panel.show_snapshot(
        TelemetrySnapshot(time.time(), HOST, (gpu(0, 13 * GiB, 3 * GiB), gpu(1, 9 * GiB, 0)), None)
    )
    panel.show_plans(plan("analytic", 1.0), plan("measured", 1.05))
    panel.show_kv([1200, 4096, 0, 310], 4096, "kv")
    for i in range(150):  # decode slows a little as the context grows; some jitter
        panel.add_speed(i * 0.5, 64 - 0.04 * i + 2.5 * math.sin(i * 1.7) + 1.5 * math.sin(i * 0.3))


@pytest.mark.parametrize("dark", [False, True])
def test_grab_renders_to_png(panel, tmp_path: Path, dark: bool):
    if dark:
        pal = QPalette()
        for role, color in (
            (QPalette.ColorRole.Window, "#202124"),
            (QPalette.ColorRole.WindowText, "#e8eaed"),
            (QPalette.ColorRole.Base, "#2b2c2f"),
            (QPalette.ColorRole.Text, "#e8eaed"),
        ):
            pal.setColor(role, QColor(color))
        panel.setPalette(pal)
    fill(panel)
    image = panel.grab().toImage()
    assert not image.isNull() and image.width() == panel.width()
    path = tmp_path / "dashboard.png"
    assert image.save(str(path)) and path.stat().st_size > 10_000
    # the window colour dominates the top-left corner: the palette was honoured
    assert image.pixelColor(2, 2).lightness() < 80 if dark else image.pixelColor(2, 2).lightness() > 150
    assert QApplication.instance() is not None
