"""The Memory dock: live telemetry, predicted-vs-measured memory, KV fill, speed, cache controls.

Owns the telemetry sampler (a background thread at 2 Hz) and hands its snapshots to the GUI
thread (``app.background.gui_thread_callback``), so the dashboard only ever paints there. Plans come from the cache panel
(predicted, on every change) and from the runtime's own log at load time (measured).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QDockWidget, QScrollArea, QTabWidget, QWidget

from app.background import gui_thread_callback
from app.memory.cache_panel import CachePanel
from app.memory.dashboard import DashboardPanel
from engine import protocol as P
from engine.core.build import gpu_backend
from engine.core.memory_types import Device, MemoryPlan, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.drafting import target_and_drafter
from engine.plan.measured import MemoryLogParser
from engine.runtime.info import plan_devices
from engine.runtime.telemetry import Telemetry, TelemetrySampler, fit_devices


def measured_plan(loaded: P.Loaded, settings: PlanSettings, drafter: bool = False) -> MemoryPlan | None:
    """What llama.cpp says it allocated during this load (its own log lines): all of it, or with
    ``drafter`` only its drafting context's part (None without one)."""
    n = loaded.n_log_target
    lines = loaded.memory_log[n:] if drafter else loaded.memory_log
    if not lines or (drafter and not n):
        return None
    parser = MemoryLogParser()
    for line in lines:
        parser.feed(line)
    return parser.result(settings, "measured")


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # wrap, never scroll sideways
    area.setWidget(widget)
    return area


class MemoryDock(QDockWidget):
    applyRequested = Signal(object)  # PlanSettings

    def __init__(self, runtime_pid: callable, parent: QWidget | None = None) -> None:  # type: ignore[valid-type]
        super().__init__("Memory", parent)
        self.setObjectName("memory-dock")
        self.setAllowedAreas(Qt.DockWidgetArea.RightDockWidgetArea | Qt.DockWidgetArea.LeftDockWidgetArea)
        self.dashboard = DashboardPanel(self)
        self.cache = CachePanel(self)
        tabs = QTabWidget(self)
        tabs.addTab(_scrolled(self.dashboard), "Dashboard")
        tabs.addTab(_scrolled(self.cache), "Cache && split")
        self.setWidget(tabs)
        self.predicted: MemoryPlan | None = None
        self.measured: MemoryPlan | None = None
        #: the drafting context's predicted plan (the draft picker's), and whether the measured
        #: plan holds a drafting context too (the MTP heads load with the model, in one log)
        self.draft_plan: MemoryPlan | None = None
        self.measured_draft: MemoryPlan | None = None
        self.telemetry = Telemetry()
        self._runtime_pid = runtime_pid
        self.sampler = TelemetrySampler(
            self.telemetry,
            self._pids,
            hz=2.0,
            callback=gui_thread_callback(self.dashboard.show_snapshot, self),
        )
        self.cache.planChanged.connect(self._on_plan)
        self.cache.applyRequested.connect(self.applyRequested.emit)
        self._recurrent = False
        self._stopped = False
        #: llama.cpp RPC workers' devices (app.machines sets it; none by default)
        self.remote_devices: Callable[[], list[Device]] = list

    def _pids(self) -> list[int]:
        pid = self._runtime_pid()
        return [os.getpid()] + ([pid] if pid else [])

    def start(self) -> None:
        """Start sampling; not after `stop` (the window starts it once it is shown, and a window
        closed before its first event-loop turn must not leave a sampler behind)."""
        if not self._stopped:
            self.sampler.start()

    def stop(self) -> None:
        self._stopped = True
        self.sampler.stop()
        self.telemetry.close()

    def devices(self) -> tuple[list[Device], str]:
        """Fit devices, from one snapshot: a runtime child already holding GPU memory has paid
        for its CUDA context (the window itself never holds any)."""
        snap = self.telemetry.snapshot(self._pids())
        devices, note = plan_devices(
            fit_devices(snap), runtime_on_gpu=any(g.this_app_bytes > 0 for g in snap.gpus)
        )
        hosts = [d for d in devices if d.kind == "cpu"]  # workers' devices go after the host, as in llama.cpp
        return hosts + self.remote_devices() + devices[len(hosts) :], note

    def workers_changed(self) -> None:
        """The Machines list changed: the split editor and the plan take the workers' devices."""
        devices, note = self.devices()
        self.cache.devices_changed(devices, note)

    # ------------------------------------------------------------------ model events
    def model_inspected(self, info: GGUFInfo, settings: PlanSettings) -> None:
        devices, note = self.devices()
        self._recurrent = info.recurrent
        self.measured = self.measured_draft = None
        self.cache.set_model(info, settings, devices, gpu_backend(), note)

    def model_loaded(self, loaded: P.Loaded, settings: PlanSettings) -> None:
        self.measured = measured_plan(loaded, settings)
        self.measured_draft = measured_plan(loaded, settings, drafter=True)
        self._recurrent = loaded.recurrent or loaded.hybrid
        self._show_plans()
        self.dashboard.show_draft_plan(self.draft_plan, self.measured_draft)
        self._parallel = settings.n_seq_max > 1  # the batch loop reports every sequence (kv_slots)
        self.dashboard.show_kv(
            [0] * max(1, settings.n_seq_max), loaded.n_ctx_seq, "state" if loaded.recurrent else "cells"
        )

    def kv_used(self, used: int, capacity: int) -> None:
        if getattr(self, "_parallel", False):
            return  # a single bar would hide the other sequences; kv_slots draws them all
        self.dashboard.show_kv([used], capacity, "state" if self._recurrent else "cells")

    def kv_slots(self, used: list[int], capacity: int) -> None:
        """One bar per parallel sequence (each API client, or the chat) while they decode."""
        self.dashboard.show_kv(list(used), capacity, "state" if self._recurrent else "cells")

    def speed(self, tokens_per_s: float) -> None:
        self.dashboard.add_speed(time.time(), tokens_per_s)

    def show_draft_plan(self, plan: MemoryPlan | None) -> None:
        """The drafter's predicted plan: its own bars, and part of the comparison when the
        measured plan holds its context."""
        self.draft_plan = plan
        self._show_plans()
        self.dashboard.show_draft_plan(plan, self.measured_draft)

    def _on_plan(self, plan: MemoryPlan) -> None:
        self.predicted = plan
        self._show_plans()

    def _show_plans(self) -> None:
        """Like against like: a model loaded with its MTP heads logs its drafting context (KV,
        compute, and the nextn weights in the model buffer) with its own, so the prediction it is
        set against is the target's plus the drafter's as it stands at load."""
        predicted = self.predicted
        if predicted is not None and self.draft_plan is not None and self.measured_draft is not None:
            predicted = target_and_drafter(predicted, self.draft_plan, at_load=True)
        self.dashboard.show_plans(predicted, self.measured, target=self.predicted)
