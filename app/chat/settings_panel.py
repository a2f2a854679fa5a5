"""The chat's settings, in view: sampling, reply length, overflow policy and the system prompt.

A one-line summary always shows what the next reply will use; "Settings" opens every field for
editing. Presets (engine.core.sampling.PRESETS) are starting points: picking one fills the fields,
and editing a field afterwards turns the preset box to "Custom". A model whose file recommends
sampling (``general.sampling.*``, engine.gguf.sampling_meta; what llama-server uses as its
defaults) adds "Model's recommendation": its values, the rest from the default preset. It is
picked for the user only while their preset is the default one. Where the values are stored
(per conversation, per model, global default) is the chat pane's business: this widget only
shows them (`set_values`) and says when the user changed one (`changed`).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.chat.overflow import POLICY_LABELS, OverflowPolicy
from engine.core.errors import InvalidSettings
from engine.core.sampling import DEFAULT_PRESET, PRESETS, RANDOM_SEED, SamplingParams

CUSTOM = "Custom"
MODEL = "Model's recommendation"
_SEED_MAX = 2**31 - 1  # QSpinBox is 32-bit signed; -1 shows "random" (llama.cpp's RANDOM_SEED)


def _double(parent: QWidget, lo: float, hi: float, step: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox(parent, minimum=lo, maximum=hi, singleStep=step, decimals=2)
    box.setToolTip(tip)
    return box


class ChatSettings(QWidget):
    """Emits ``changed`` after the user edits any field (not after `set_values`)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._quiet = False
        self._model: SamplingParams | None = None  # the model's recommendation, if any
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.toggle = QPushButton("Settings", self, checkable=True)
        self.toggle.setToolTip("Show the sampling settings, reply length, overflow policy and system prompt")
        self.preset_box = QComboBox(self)
        self.preset_box.addItems([*PRESETS, CUSTOM])
        self.preset_box.setToolTip("A starting point: picking one fills the fields below")
        self.temperature = _double(self, 0.0, 5.0, 0.05, "Temperature: 0 always picks the likeliest token")
        self.top_p = _double(
            self, 0.01, 1.0, 0.01, "Top-p: keep the likeliest tokens up to this probability mass"
        )
        self.top_k = QSpinBox(self, minimum=0, maximum=1000)
        self.top_k.setToolTip("Top-k: keep only the k likeliest tokens (0: off)")
        self.min_p = _double(
            self, 0.0, 0.99, 0.01, "Min-p: drop tokens less likely than this share of the top one"
        )
        self.repeat_penalty = _double(self, 0.5, 3.0, 0.05, "Repeat penalty (1: off)")
        self.seed = QSpinBox(self, minimum=-1, maximum=_SEED_MAX, specialValueText="random")
        self.seed.setToolTip("Seed: the same seed and settings give the same reply")
        self.max_tokens = QSpinBox(self, minimum=1, maximum=32768, singleStep=64)
        self.max_tokens.setToolTip("Longest reply, in tokens")
        self.overflow_box = QComboBox(self)
        for policy, label in POLICY_LABELS.items():
            self.overflow_box.addItem(label, policy.value)
        self.overflow_box.setToolTip("What to send when the conversation no longer fits the context")
        self.system_edit = QPlainTextEdit(self, placeholderText="System prompt (optional)")
        self.system_edit.setFixedHeight(72)

        grid = QGridLayout()
        fields = [
            ("Preset", self.preset_box),
            ("Temperature", self.temperature),
            ("Top-p", self.top_p),
            ("Top-k", self.top_k),
            ("Min-p", self.min_p),
            ("Repeat penalty", self.repeat_penalty),
            ("Seed", self.seed),
            ("Max tokens", self.max_tokens),
        ]
        for i, (name, widget) in enumerate(fields):
            form = QFormLayout()
            form.addRow(name, widget)
            grid.addLayout(form, i // 4, i % 4)
        self.details = QWidget(self)
        dl = QVBoxLayout(self.details)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addLayout(grid)
        policy_row = QFormLayout()
        policy_row.addRow("When the context is full", self.overflow_box)
        dl.addLayout(policy_row)
        dl.addWidget(self.system_edit)
        self.details.setVisible(False)
        head = QHBoxLayout()
        head.addWidget(self.summary, 1)
        head.addWidget(self.toggle)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.details)
        self.toggle.toggled.connect(self.details.setVisible)

        self.preset_box.currentTextChanged.connect(self._on_preset)
        for box in (self.temperature, self.top_p, self.min_p, self.repeat_penalty):
            box.valueChanged.connect(self._on_field)
        for box in (self.top_k, self.seed):
            box.valueChanged.connect(self._on_field)
        self.max_tokens.valueChanged.connect(self._emit)
        self.overflow_box.currentIndexChanged.connect(self._emit)
        self.set_values({})

    # ------------------------------------------------------------------ values
    def sampling(self) -> SamplingParams:
        seed = self.seed.value()
        return SamplingParams(
            temperature=self.temperature.value(),
            top_k=self.top_k.value(),
            top_p=self.top_p.value(),
            min_p=self.min_p.value(),
            repeat_penalty=self.repeat_penalty.value(),
            seed=RANDOM_SEED if seed < 0 else seed,
        )

    @property
    def policy(self) -> str:
        return str(self.overflow_box.currentData() or OverflowPolicy.ROLLING.value)

    def values(self) -> dict[str, Any]:
        """What the store keeps per conversation and as defaults (not the system prompt)."""
        return {
            "preset": self.preset_box.currentText(),
            "sampling": self.sampling().to_dict(),
            "max_tokens": self.max_tokens.value(),
            "overflow": self.policy,
        }

    def presets(self) -> dict[str, SamplingParams]:
        """The presets offered now: the fixed ones, and the model's recommendation if any."""
        return {**PRESETS, MODEL: self._model} if self._model is not None else dict(PRESETS)

    def set_values(self, values: dict[str, Any], recommended: dict[str, float] | None = None) -> None:
        """Show stored values (missing ones: the default preset, 512 tokens, rolling); quietly.

        ``recommended``: the loaded model's own sampling fields (``GGUFInfo.sampling``); when
        there are any they are offered as a preset, and shown instead of the default preset."""
        self._offer(recommended or {})
        preset = values.get("preset", DEFAULT_PRESET)
        if preset == DEFAULT_PRESET and self._model is not None:
            preset = MODEL
        presets = self.presets()
        preset = preset if preset in presets or preset == CUSTOM else DEFAULT_PRESET
        base = presets.get(preset, PRESETS[DEFAULT_PRESET]).to_dict()
        stored = values.get("sampling")
        if isinstance(stored, dict):
            base.update(stored if preset == CUSTOM else {"seed": stored.get("seed", base["seed"])})
        try:
            sampling = SamplingParams.from_dict(base)
        except (ValueError, InvalidSettings):
            sampling = PRESETS[DEFAULT_PRESET]
        self._quiet = True
        try:
            self.preset_box.setCurrentText(preset)
            self._show_sampling(sampling)
            self.max_tokens.setValue(int(values.get("max_tokens", 512)))
            index = self.overflow_box.findData(values.get("overflow", OverflowPolicy.ROLLING.value))
            self.overflow_box.setCurrentIndex(max(0, index))
        finally:
            self._quiet = False
        self._summarise()

    def _offer(self, recommended: dict[str, float]) -> None:
        """Add or drop the "Model's recommendation" entry (values it lacks: the default preset)."""
        try:
            model = SamplingParams.from_dict({**PRESETS[DEFAULT_PRESET].to_dict(), **recommended})
        except (ValueError, InvalidSettings):
            model = None
        self._model = model if recommended else None
        self._quiet = True
        try:
            at = self.preset_box.findText(MODEL)
            if at >= 0:
                self.preset_box.removeItem(at)
            if self._model is not None:
                self.preset_box.insertItem(len(PRESETS), MODEL)
                fields = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in recommended.items())
                tip = (
                    f"From the model file's general.sampling.* keys: {fields}; "
                    f"the other fields from {DEFAULT_PRESET}"
                )
                self.preset_box.setItemData(len(PRESETS), tip, Qt.ItemDataRole.ToolTipRole)
        finally:
            self._quiet = False

    def set_policy(self, policy: str) -> None:
        """Switch the overflow policy as if the user had (the "let older messages drop out" button);
        `changed` follows even when it was already chosen, so the conversation stores it."""
        self._quiet = True
        self.overflow_box.setCurrentIndex(max(0, self.overflow_box.findData(policy)))
        self._quiet = False
        self._emit()

    def _show_sampling(self, s: SamplingParams) -> None:
        self.temperature.setValue(s.temperature)
        self.top_p.setValue(s.top_p)
        self.top_k.setValue(s.top_k)
        self.min_p.setValue(s.min_p)
        self.repeat_penalty.setValue(s.repeat_penalty)
        self.seed.setValue(-1 if s.seed == RANDOM_SEED or s.seed > _SEED_MAX else s.seed)

    # ------------------------------------------------------------------ edits
    def _on_preset(self, name: str) -> None:
        preset = self.presets().get(name)
        if self._quiet or preset is None:
            return
        self._quiet = True
        try:
            self._show_sampling(preset)
        finally:
            self._quiet = False
        self._emit()

    def _on_field(self) -> None:
        if self._quiet:
            return
        preset = self.presets().get(self.preset_box.currentText())
        if preset is None or preset.to_dict() != {**preset.to_dict(), **self._shown()}:
            self._quiet = True
            self.preset_box.setCurrentText(CUSTOM)
            self._quiet = False
        self._emit()

    def _shown(self) -> dict[str, Any]:
        d = self.sampling().to_dict()
        d.pop("seed")  # presets pick no seed; a chosen seed does not make them custom
        return d

    def _emit(self) -> None:
        self._summarise()
        if not self._quiet:
            self.changed.emit()

    def _summarise(self) -> None:
        s = self.sampling()
        seed = "random seed" if s.seed == RANDOM_SEED else f"seed {s.seed}"
        policy = OverflowPolicy(self.policy).value
        self.summary.setText(
            f"{self.preset_box.currentText()} · temperature {s.temperature:g} · top-p {s.top_p:g} · "
            f"top-k {s.top_k} · min-p {s.min_p:g} · repeat {s.repeat_penalty:g} · {seed} · "
            f"max {self.max_tokens.value()} tokens · overflow: {policy}"
        )
