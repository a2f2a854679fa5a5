"""Cache and split controls: every change re-plans at once and explains invalid combinations.

The analytic plan takes milliseconds, so it runs on the GUI thread on every change; the fitted
maximum context (a few dozen plans) is recomputed only when something other than the context
changes. Nothing is loaded until the user presses *Apply and reload*.

The fit leaves room for the picker's drafter (`set_drafter`), as ``kvdeck fit --mtp``/``--draft``.
The fit keeps the same margins as ``kvdeck fit --margin-mib/--cpu-margin-mib`` (`Margins`): one
for every GPU, one for host RAM, set here and kept as the ``fit_margins`` setting (the window
stores it; the first load's fit and "use a larger context" read `margins()` too).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.memory.marked_slider import MarkedSlider
from app.memory.precision_view import PrecisionView, Source
from app.memory.split_names import split_label, split_unavailable
from app.theme import status_color, warning_color
from engine.core.memory_types import COMPONENTS, KV_TYPES, Device, MemoryPlan, MiB, PlanSettings, Problem
from engine.core.units import format_bytes
from engine.gguf.inspect import GGUFInfo
from engine.plan.analytic import analytic_plan
from engine.plan.drafter_spec import drafter_for
from engine.plan.fit import fit
from engine.plan.kv_speed import speed_hint
from engine.plan.margins import Margins
from engine.plan.rules import check_settings, default_cache_type

MARGINS_SETTING = "fit_margins"  # {"gpu_mib": int, "cpu_mib": int}
_MAX_MARGIN_MIB = 1 << 20  # 1 TiB


def margins_from_setting(value: Any) -> Margins:
    """The stored margins; the defaults (llama.cpp's -fitt 1024 MiB) for a missing or bad value."""
    if not isinstance(value, dict):
        return Margins()
    default = Margins()

    def mib(key: str, fallback: int) -> int:
        v = value.get(key)
        return v * MiB if type(v) is int and 0 <= v <= _MAX_MARGIN_MIB else fallback

    return Margins(gpu=mib("gpu_mib", default.gpu), cpu=mib("cpu_mib", default.cpu))


def margins_setting(margins: Margins) -> dict[str, int]:
    return {"gpu_mib": margins.gpu // MiB, "cpu_mib": margins.cpu // MiB}


class CachePanel(QWidget):
    """Emits ``planChanged(plan)`` on every change, ``applyRequested(settings)`` on apply and
    ``marginsChanged(Margins)`` when the user changes a fit margin."""

    planChanged = Signal(object)
    applyRequested = Signal(object)
    marginsChanged = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.info: GGUFInfo | None = None
        self.devices: list[Device] = []
        self.backend = "cpu"
        self.gpu_note = ""
        self.fitted_ctx = 0
        self.drafter: tuple[str, str] = ("", "")  # the draft picker's (mode, path): fitted too
        self._last_plan: MemoryPlan | None = None
        self._building = False
        self._build()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.type_k = QComboBox(self)
        self.type_v = QComboBox(self)
        for box in (self.type_k, self.type_v):
            box.addItems(list(KV_TYPES))
        self.flash = QComboBox(self)
        self.flash.addItems(["auto", "on", "off"])
        self.swa_full = QCheckBox("full-size SWA cache", self)
        self.parallel = QSpinBox(self, minimum=1, maximum=256)
        self.unified = QCheckBox("unified KV (one pool for all sequences)", self)
        self.ctx_slider = MarkedSlider(self)
        self.ctx_slider.setSingleStep(1)
        self.ctx_label = QLabel(self, wordWrap=True)
        self.ngl = QSpinBox(self, minimum=-1, maximum=1000, specialValueText="all")
        self.cpu_moe = QSpinBox(self, minimum=0, maximum=1000, specialValueText="none")  # --n-cpu-moe
        self.cpu_moe.setToolTip("Keep the routed expert weights of the first N layers in host memory")
        self.ubatch = QSpinBox(self, minimum=32, maximum=8192, singleStep=32, value=512)
        self.gpu_margin = QSpinBox(self, minimum=0, maximum=_MAX_MARGIN_MIB, singleStep=256, suffix=" MiB")
        self.cpu_margin = QSpinBox(self, minimum=0, maximum=_MAX_MARGIN_MIB, singleStep=256, suffix=" MiB")
        self.gpu_margin.setToolTip(
            "Memory the fitted context leaves free on each GPU (llama.cpp's -fitt; kvdeck fit --margin-mib)"
        )
        self.cpu_margin.setToolTip(
            "Host RAM the fitted context leaves free for the system and other programs "
            "(kvdeck fit --cpu-margin-mib)"
        )
        self._show_margins(Margins())
        cache = QFormLayout()
        cache.addRow("K type", self.type_k)
        cache.addRow("V type", self.type_v)
        cache.addRow("Flash attention", self.flash)
        cache.addRow("", self.swa_full)
        cache.addRow("Parallel sequences", self.parallel)
        cache.addRow("", self.unified)
        cache.addRow("Context", self.ctx_slider)
        cache.addRow("", self.ctx_label)
        cache.addRow("GPU layers", self.ngl)
        cache.addRow("Experts on CPU (layers)", self.cpu_moe)
        cache.addRow("Micro-batch", self.ubatch)
        cache.addRow("Keep free on GPU", self.gpu_margin)
        cache.addRow("Keep free in RAM", self.cpu_margin)
        cache.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a narrow dock: labels above
        cache_box = QGroupBox("KV cache", self)
        cache_box.setLayout(cache)

        self.split_mode = QComboBox(self)
        self.split_mode.addItems(["none", "layer", "row", "tensor"])
        self.main_gpu = QComboBox(self)
        self.ratio_row = QHBoxLayout()
        self.ratios: list[QDoubleSpinBox] = []
        self.split_note = QLabel(self, wordWrap=True)
        split = QFormLayout()
        split.addRow("Split mode", self.split_mode)
        split.addRow("Main GPU", self.main_gpu)
        split.addRow("Tensor split", self.ratio_row)
        split.addRow(self.split_note)
        split.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        split_box = QGroupBox("Multi-GPU split", self)
        split_box.setLayout(split)

        self.problems = QLabel(self, wordWrap=True, textFormat=Qt.TextFormat.RichText)
        self.speed_hint = QLabel(self, wordWrap=True)
        self.speed_hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.summary = QLabel(self, wordWrap=True, textFormat=Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply = QPushButton("Apply and reload", self, clicked=self._apply)
        layout = QVBoxLayout(self)
        layout.addWidget(cache_box)
        layout.addWidget(split_box)
        layout.addWidget(self.speed_hint)
        layout.addWidget(self.problems)
        layout.addWidget(self.summary)
        layout.addWidget(self.apply)
        self.quality = PrecisionView(  # "Check quality": a background run on the chosen types
            lambda: Source(self.info, self.settings(), self.devices) if self.info else None, self
        )
        layout.addWidget(self.quality)
        layout.addStretch(1)
        for w in (self.type_k, self.type_v, self.flash, self.split_mode, self.main_gpu):
            w.currentIndexChanged.connect(lambda _i: self._changed(refit=True))
        for w in (self.swa_full, self.unified):
            w.toggled.connect(lambda _b: self._changed(refit=True))
        for w in (self.parallel, self.ngl, self.cpu_moe, self.ubatch):
            w.valueChanged.connect(lambda _v: self._changed(refit=True))
        self.ctx_slider.valueChanged.connect(lambda _v: self._changed(refit=False))
        for w in (self.gpu_margin, self.cpu_margin):
            w.valueChanged.connect(lambda _v: self._margin_changed())
        self.setEnabled(False)

    # ------------------------------------------------------------------ fit margins
    def margins(self) -> Margins:
        return Margins(gpu=self.gpu_margin.value() * MiB, cpu=self.cpu_margin.value() * MiB)

    def set_margins(self, margins: Margins) -> None:
        """Show stored margins (no ``marginsChanged``) and refit with them."""
        self._show_margins(margins)
        self._changed(refit=True)

    def _show_margins(self, margins: Margins) -> None:
        building, self._building = self._building, True
        self.gpu_margin.setValue(margins.gpu // MiB)
        self.cpu_margin.setValue(margins.cpu // MiB)
        self._building = building

    def _margin_changed(self) -> None:
        if self._building:
            return
        self.marginsChanged.emit(self.margins())
        self._changed(refit=True)

    def set_drafter(self, mode: str, path: str = "") -> None:
        """The draft picker chose a drafter (or none): refit target + drafter together."""
        self.drafter = (mode, path)
        self._changed(refit=True)

    # ------------------------------------------------------------------ model and devices
    def set_model(
        self, info: GGUFInfo, settings: PlanSettings, devices: list[Device], backend: str, gpu_note: str = ""
    ) -> None:
        """Show a model's settings; K/V default to the type matched to the weights."""
        self._building = True
        self.info, self.devices, self.backend, self.gpu_note = info, devices, backend, gpu_note
        gpus = [d for d in devices if d.kind == "gpu"]
        self.type_k.setCurrentText(settings.type_k or default_cache_type(info))
        self.type_v.setCurrentText(settings.type_v or default_cache_type(info))
        self.flash.setCurrentText(settings.flash_attn)
        self.swa_full.setChecked(settings.swa_full)
        self.swa_full.setEnabled(info.n_swa > 0)
        self.parallel.setValue(settings.n_seq_max)
        self.unified.setChecked(settings.kv_unified)
        steps = max(1, info.n_ctx_train // 256)
        self.ctx_slider.setRange(1, steps)
        self.ctx_slider.setValue(max(1, min(steps, (settings.n_ctx or 4096) // 256)))
        self.ngl.setValue(settings.n_gpu_layers)
        self.ngl.setEnabled(bool(gpus))
        self.cpu_moe.setValue(settings.n_cpu_moe)
        self.cpu_moe.setEnabled(bool(gpus) and info.n_expert > 0)
        self.gpu_margin.setEnabled(bool(gpus))
        self.ubatch.setValue(settings.n_ubatch)
        self.main_gpu.clear()
        self.main_gpu.addItems([d.name for d in gpus] or ["(no GPU)"])
        self.main_gpu.setCurrentIndex(min(settings.main_gpu, max(0, len(gpus) - 1)))
        self._set_split_choices(gpus, settings)
        self._building = False
        self.setEnabled(True)
        self._changed(refit=True)

    def devices_changed(self, devices: list[Device], gpu_note: str = "") -> None:
        """Workers were added or removed (app.machines): the split editor and the plan follow,
        keeping the other settings as they are on screen."""
        if self.info is None:
            return
        s = self.settings().replace(tensor_split=())
        if not any(d.kind == "gpu" for d in self.devices):  # no split was possible: llama.cpp's default
            s = s.replace(split_mode="layer", n_gpu_layers=PlanSettings().n_gpu_layers)
        self.set_model(self.info, s, devices, self.backend, gpu_note)

    def _set_split_choices(self, gpus: list[Device], settings: PlanSettings) -> None:
        n_gpus = len(gpus)
        model = self.split_mode.model()
        reasons: list[str] = []
        for i, mode in enumerate(("none", "layer", "row", "tensor")):
            why = split_unavailable(mode, n_gpus, self.backend)
            item = model.item(i)
            item.setEnabled(why is None)
            item.setToolTip(why or "")
            if why and mode != "none":
                reasons.append(f"{mode}: {why}")
        wanted = (
            settings.split_mode
            if model.item(["none", "layer", "row", "tensor"].index(settings.split_mode)).isEnabled()
            else ("layer" if n_gpus else "none")
        )
        self.split_mode.setCurrentText(wanted)
        while self.ratio_row.count():
            self.ratio_row.takeAt(0).widget().deleteLater()
        self.ratios = []
        workers = any(d.endpoint for d in gpus)
        for i, dev in enumerate(gpus):
            # ratios are relative; a split pinned for workers is in MiB (engine.plan.fit.pin_split)
            box = QDoubleSpinBox(self, minimum=0.0, maximum=1e7, singleStep=0.5, decimals=1)
            # with workers, unset ratios start at llama.cpp's own default: free memory (GiB)
            default = round(dev.free_bytes / (1 << 30), 1) if workers else 1.0
            box.setValue(settings.tensor_split[i] if i < len(settings.tensor_split) else default)
            box.setPrefix(f"{split_label(dev, i)}: ")
            box.setToolTip(f"{dev.name}: {dev.description}" if dev.description else dev.name)
            box.valueChanged.connect(lambda _v: self._changed(refit=True))
            self.ratio_row.addWidget(box)
            self.ratios.append(box)
        if n_gpus == 0:
            self.split_note.setText(f"No GPU split: {self.gpu_note or 'no GPU'}.")
            return
        note = self.gpu_note or ("one GPU: nothing to split" if n_gpus == 1 else "")
        self.split_note.setText("; ".join(filter(None, [note, *reasons])))

    # ------------------------------------------------------------------ planning
    def settings(self) -> PlanSettings:
        ratios = tuple(b.value() for b in self.ratios) if self.split_mode.currentText() != "none" else ()
        return PlanSettings(
            n_ctx=self.ctx_slider.value() * 256,
            n_seq_max=self.parallel.value(),
            kv_unified=self.unified.isChecked(),
            type_k=self.type_k.currentText(),
            type_v=self.type_v.currentText(),
            flash_attn=self.flash.currentText(),  # type: ignore[arg-type]
            swa_full=self.swa_full.isChecked(),
            n_ubatch=self.ubatch.value(),
            n_gpu_layers=self.ngl.value(),
            n_cpu_moe=self.cpu_moe.value(),
            split_mode=self.split_mode.currentText(),  # type: ignore[arg-type]
            tensor_split=ratios if any(ratios) else (),
            main_gpu=max(0, self.main_gpu.currentIndex()),
        )

    def _changed(self, refit: bool) -> None:
        # measured on a CUDA GPU: meaningless for a CPU-only (or another GPU backend) build
        hint = (
            speed_hint(self.type_k.currentText(), self.type_v.currentText())
            if getattr(self, "backend", "") == "cuda"
            else ""
        )
        self.speed_hint.setText(hint)
        self.speed_hint.setVisible(bool(hint))
        if self._building or self.info is None:
            return
        s = self.settings()
        n_gpus = sum(1 for d in self.devices if d.kind == "gpu")
        problems = check_settings(self.info, s, n_gpus, self.backend)
        self._show_problems(problems)
        errors = [p for p in problems if p.severity == "error"]
        self.apply.setEnabled(not errors)
        if errors:
            self.summary.setText("")
            return
        if refit:
            fs, draft = drafter_for(self.info, s, *self.drafter)  # as `kvdeck fit --mtp / --draft`
            result = fit(
                self.info, fs, self.devices, plan_fn=analytic_plan, margins=self.margins(), draft=draft
            )
            self.fitted_ctx = result.plan.n_ctx if result.fits else 0
            self.ctx_slider.set_mark(self.fitted_ctx // 256 if self.fitted_ctx else None)
            self.ctx_slider.setToolTip(
                f"red mark: the largest context that fits ({self.fitted_ctx:,} tokens)"
                if self.fitted_ctx
                else "nothing fits the memory budget"
            )
        plan = analytic_plan(self.info, s, self.devices)
        self._show_summary(plan)
        self._last_plan = plan
        self.planChanged.emit(plan)

    def _show_problems(self, problems: list[Problem]) -> None:
        rows = [
            f'<p style="color:{status_color(False, self.palette()) if p.severity == "error" else warning_color(self.palette())};">'
            f"{'✖' if p.severity == 'error' else '⚠'} {p.message}</p>"
            for p in problems
        ]
        self.problems.setText("".join(rows))
        self.problems.setVisible(bool(rows))

    def _show_summary(self, plan: MemoryPlan) -> None:
        ctx = plan.n_ctx
        fitted = (
            f" · fits up to <b>{self.fitted_ctx:,}</b>" if self.fitted_ctx else " · does not fit the budget"
        )
        self.ctx_label.setText(f"{ctx:,} tokens (training {self.info.n_ctx_train:,}){fitted}")
        prev = self._last_plan
        lines = []
        for dev in plan.devices():
            parts = []
            for c in COMPONENTS:
                now = plan.bytes_for(dev, c)
                if not now and not (prev and prev.bytes_for(dev, c)):
                    continue
                delta = now - prev.bytes_for(dev, c) if prev else 0
                muted = status_color(None, self.palette())
                change = (
                    f' <span style="color:{muted};">({format_bytes(delta, signed=True)})</span>'
                    if delta
                    else ""
                )
                parts.append(f"{c} {format_bytes(now)}{change}")
            lines.append(f"<b>{dev}</b>: {format_bytes(plan.bytes_for(dev))} — " + ", ".join(parts))
        lines += [f"· {n}" for n in plan.notes]
        self.summary.setText("<br>".join(lines))

    def _apply(self) -> None:
        self.applyRequested.emit(self.settings())
