"""The "Check quality" button: what each KV cache type costs in quality, measured in the background.

The check itself runs in its own runtime child (``app.bridges.precision_job.PrecisionJob``); this
view chooses the cache types to compare, starts and stops the job, and shows each type's row and
its place on the memory-against-quality chart as it arrives. It never waits for the child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.bridges.precision_job import Pair, PrecisionJob
from app.memory.precision_chart import ChartPoint, QualityChart
from engine.core.memory_types import Device, MiB, PlanSettings
from engine.core.precision_prompts import builtin_prompts
from engine.gguf.inspect import GGUFInfo
from engine.plan.analytic import analytic_plan
from engine.plan.rules import check_settings, default_cache_type
from engine.protocol import PrecisionResult

#: Checked besides the chosen type (K = V): half, 8-bit, 5-bit and 4-bit caches.
ALTERNATIVES = ("f16", "q8_0", "q5_1", "q4_0")
REFERENCE = ("f32", "f32")


@dataclass(frozen=True)
class Source:
    """What the check is about: the model, the settings chosen in the cache panel, the devices."""

    info: GGUFInfo
    settings: PlanSettings
    devices: list[Device]


def candidate_pairs(source: Source, alternatives: tuple[str, ...] = ALTERNATIVES) -> list[Pair]:
    """The chosen pair first, then the alternatives and the weights' type (K = V), deduplicated,
    without the f32 reference and without pairs llama.cpp would refuse for this model."""
    s = source.settings
    matched = default_cache_type(source.info)
    wanted = [(s.type_k, s.type_v)] + [(t, t) for t in (*alternatives, matched)]
    n_gpus = sum(1 for d in source.devices if d.kind == "gpu")
    out: list[Pair] = []
    for pair in wanted:
        if pair in out or pair == REFERENCE:
            continue
        trial = s.replace(type_k=pair[0], type_v=pair[1], flash_attn="on")
        if any(
            p.severity == "error" and p.field in ("type_k", "type_v", "flash_attn")
            for p in check_settings(source.info, trial, n_gpus)
        ):
            continue  # (problems with other settings, e.g. the split, do not concern the check)
        out.append(pair)
    return out


def _divergences(first: list[int | None]) -> str:
    """Per prompt, in prompt order: the first differing token, "–" where all tokens matched."""
    return ", ".join("–" if d is None else str(d) for d in first)


class PrecisionView(QGroupBox):
    """The "Check quality" button, progress, and the memory-against-quality table and chart.

    ``source`` is asked for the model and settings when the button is pressed (the cache panel
    passes its own state), so the check always matches what the panel shows.
    """

    finished = Signal(str)  # "" when every type was checked, else the error

    COLUMNS = ("K / V", "KV cache", "mean KL", "top-1", "first divergence", "")

    def __init__(self, source: Callable[[], Source | None], parent: QWidget | None = None) -> None:
        super().__init__("Quality of the cache types", parent)
        self._source = source
        self.prompts: list[str] = builtin_prompts()
        self.n_tokens = 30
        self.n_threads = 0  # 0: physical cores, as the chat's runtime
        self.alternatives: tuple[str, ...] = ALTERNATIVES
        self.job: PrecisionJob | None = None
        self._current: Source | None = None
        self._chosen: Pair = REFERENCE
        self.results: dict[Pair, PrecisionResult] = {}
        self.check = QPushButton("Check quality", self, clicked=self.start)
        self.check.setToolTip(
            "Compare cache types with an f32 cache on this model (loads a second "
            "copy of the model in the background)"
        )
        self.stop_button = QPushButton("Stop", self, clicked=self.stop)
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar(self, minimum=0, maximum=1000, textVisible=False)
        self.progress.setVisible(False)
        self.status = QLabel(self, wordWrap=True)
        self.table = QTableWidget(0, len(self.COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.chart = QualityChart(self)
        buttons = QHBoxLayout()
        buttons.addWidget(self.check)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.progress, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        layout.addWidget(self.chart)
        layout.addStretch(1)
        self.table.setVisible(False)
        self.chart.setVisible(False)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        if self.job is not None:
            return
        src = self._source()
        if src is None:
            self.status.setText("Load or choose a model first.")
            return
        pairs = candidate_pairs(src, self.alternatives)
        self._current, self._chosen = src, (src.settings.type_k, src.settings.type_v)
        self.results = {}
        job = PrecisionJob(
            str(src.info.path),
            pairs,
            list(self.prompts),
            self.n_tokens,
            src.settings.n_gpu_layers,
            self.n_threads,
        )
        self.job = job
        self.destroyed.connect(lambda *_: job.stop())  # never outlive the view
        self.check.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.status.setText("starting a runtime for the check…")
        self._refresh()
        job.start(self, lambda news: self._on_news(job, news), lambda error: self._on_finished(job, error))

    def stop(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.stop()
            self._done("Stopped." + (" Partial results below." if self.results else ""))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802  (Qt's name)
        self.stop()
        super().closeEvent(event)

    def _on_news(self, job: PrecisionJob, news: tuple) -> None:
        if job is not self.job:
            return  # a stopped job's late news
        if news[0] == "progress":
            self.progress.setValue(news[1])
            self.status.setText(news[2])
        else:
            r: PrecisionResult = news[1]
            self.results[(r.type_k, r.type_v)] = r
            self._refresh()

    def _on_finished(self, job: PrecisionJob, error: str) -> None:
        if job is not self.job:
            return
        self.job = None
        n = len(self.prompts)
        name = Path(self._current.info.path).name if self._current is not None else "the model"
        self._done(
            f"Could not finish the check: {error}"
            if error
            else f"{name}, checked against an f32 cache without flash attention (nothing rounded): "
            f"{self.n_tokens} greedy tokens × {n} prompts, each type with flash attention "
            "on. Lower KL is better; ★ matches the weights."
        )
        self.finished.emit(error)

    def _done(self, text: str) -> None:
        self.check.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.progress.setVisible(False)
        self.status.setText(text)

    # ------------------------------------------------------------------ showing
    def kv_mib(self, pair: Pair) -> float:
        """KV cache MiB of a pair at the context chosen in the panel (the memory it would cost)."""
        src = self._current
        assert src is not None
        fa = "off" if pair == REFERENCE else "on"
        s = src.settings.replace(type_k=pair[0], type_v=pair[1], flash_attn=fa)
        return analytic_plan(src.info, s, src.devices).bytes_for(None, "kv") / MiB

    def rows(self) -> list[tuple[Pair, float | None, float, list[int | None]]]:
        """(pair, mean KL, top-1, divergences) of the reference and every finished type."""
        from engine.core.precision_metrics import finite_or_none  # numpy: not needed at start-up

        ref: tuple[Pair, float | None, float, list[int | None]] = (REFERENCE, 0.0, 1.0, [])
        return [ref] + [
            ((r.type_k, r.type_v), finite_or_none(r.mean_kl), r.top1_agreement, list(r.first_divergence))
            for r in self.results.values()
        ]

    def _refresh(self) -> None:
        src = self._current
        if src is None:
            return
        matched = default_cache_type(src.info)
        ctx = analytic_plan(src.info, src.settings, src.devices).n_ctx
        self.table.setHorizontalHeaderItem(1, QTableWidgetItem(f"KV @ {ctx:,}"))
        rows = self.rows()
        self.table.setRowCount(len(rows))
        points: list[ChartPoint] = []
        for i, (pair, kl, top1, first) in enumerate(rows):
            label = pair[0] if pair[0] == pair[1] else f"{pair[0]}/{pair[1]}"
            mib = self.kv_mib(pair)
            notes = [
                n
                for n, on in (
                    ("reference", pair == REFERENCE),
                    ("chosen", pair == self._chosen),
                    ("★ matches the weights", pair == (matched, matched)),
                )
                if on
            ]
            cells = (
                label,
                f"{mib:,.1f} MiB",
                "broken" if kl is None else "0" if kl == 0 else f"{kl:.2e}",
                f"{top1:.1%}",
                "—" if pair == REFERENCE else _divergences(first),
                ", ".join(notes),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col in (1, 2, 3):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if pair == self._chosen:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(i, col, item)
            points.append(
                ChartPoint(label, mib, kl, chosen=pair == self._chosen, matched=pair == (matched, matched))
            )
        self.table.resizeColumnsToContents()
        header = self.table.horizontalHeader().height()
        self.table.setFixedHeight(
            header + sum(self.table.rowHeight(i) for i in range(len(rows))) + 2 * self.table.frameWidth() + 2
        )
        self.chart.set_points(points)
        self.table.setVisible(True)
        self.chart.setVisible(True)
