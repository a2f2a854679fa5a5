"""The download rows of the Get-models pane: one per queued model, progress, speed, time left.

`engine.hub.jobs.DownloadQueue` downloads on its own worker thread and calls back there; the
callback is `app.background.gui_thread_callback`, so every row is only touched on the GUI
thread. The queue is created on the first download: a window that never downloads starts no
thread. Cancel discards the partial file (a user who cancels wants the disk space back; the
CLI's ``kvdeck hub get`` keeps it for a resume).
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.background import gui_thread_callback
from app.hub.text import progress_text
from engine.hub.jobs import DownloadJob, DownloadQueue
from engine.hub.names import RemoteModel

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")


class JobRow(QFrame):
    """One download: its name, a progress bar, "x of y · speed · time left", Cancel/Load."""

    def __init__(self, job: DownloadJob, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job = job
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.name = QLabel(f"<b>{job.model.name}</b> · {job.model.repo}", self)
        self.name.setTextFormat(Qt.TextFormat.RichText)
        self.name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar(self, maximum=1000, textVisible=True)
        self.status = QLabel(self)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.button = QPushButton("Cancel", self)
        self.button.setObjectName("hub-job-button")
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 4, 6, 4)
        grid.addWidget(self.name, 0, 0)
        grid.addWidget(self.button, 0, 1, 2, 1)
        grid.addWidget(self.bar, 1, 0)
        grid.addWidget(self.status, 2, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        self.update_from_job()

    def update_from_job(self) -> None:
        job, p = self.job, self.job.progress
        if p is not None and p.total:
            self.bar.setValue(int(1000 * min(p.done, p.total) / p.total))
        if job.state == "done":
            self.bar.setValue(1000)
        self.bar.setFormat("%p%" if job.state in ACTIVE else job.state)
        text = job.error if job.state == "failed" and job.error else progress_text(p, job.state)
        self.status.setText(" ".join(str(text).split()))
        self.status.setToolTip(self.status.text())
        if job.state in ACTIVE:
            self.button.setText("Cancel")
        elif job.state == "done" and job.model.role in ("model", "draft"):
            self.button.setText("Load")
        else:
            self.button.setText("Clear")


class DownloadsView(QWidget):
    """The queue's jobs as rows; `finished(job)` on the GUI thread when one ends."""

    finished = Signal(object)  # DownloadJob (done, failed or cancelled)
    started = Signal(object)  # DownloadJob, just queued
    loadRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue: DownloadQueue | None = None
        self.rows: dict[int, JobRow] = {}
        self._reported: set[int] = set()
        self._inner = QWidget(self)
        self._list = QVBoxLayout(self._inner)
        self._list.setContentsMargins(0, 0, 0, 0)
        self._list.addStretch(1)
        self.empty = QLabel("No downloads yet: pick a file above and click Download.", self)
        self.empty.setEnabled(False)  # the palette's disabled text: a hint, not content
        area = QScrollArea(self)
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setWidget(self._inner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty)
        layout.addWidget(area, 1)
        self._forward = gui_thread_callback(self._on_change, self)

    def add(self, model: RemoteModel, revision: str = "main") -> DownloadJob:
        if self.queue is None:
            self.queue = DownloadQueue(on_change=self._forward)
        job = self.queue.add(model, revision)
        row = JobRow(job, self._inner)
        row.button.clicked.connect(lambda _=False, j=job: self._clicked(j))
        self.rows[job.id] = row
        self._list.insertWidget(self._list.count() - 1, row)
        self.empty.hide()
        self.started.emit(job)
        return job

    def active(self, model: RemoteModel) -> DownloadJob | None:
        """The queued or running job for this model, if any (one click, one download)."""
        for row in self.rows.values():
            j = row.job
            if j.state in ACTIVE and (j.model.repo, j.model.name) == (model.repo, model.name):
                return j
        return None

    def cancel(self, job: DownloadJob) -> None:
        if self.queue is not None:
            self.queue.cancel(job, discard=True)

    def _clicked(self, job: DownloadJob) -> None:
        if job.state in ACTIVE:
            self.cancel(job)
        elif job.state == "done" and job.path is not None and job.model.role in ("model", "draft"):
            self.loadRequested.emit(str(job.path))
        else:
            row = self.rows.pop(job.id, None)
            if row is not None:
                row.deleteLater()
            self.empty.setVisible(not self.rows)

    def _on_change(self, job: object) -> None:
        """On the GUI thread, for every state change and progress step of the queue."""
        if not isinstance(job, DownloadJob):
            return
        row = self.rows.get(job.id)
        if row is not None:
            row.update_from_job()
        if job.state not in ACTIVE and job.finished.is_set() and job.id not in self._reported:
            self._reported.add(job.id)
            self.finished.emit(job)

    def close_queue(self) -> None:
        """Stop the queue (the window closes): queued jobs end, a running one is cancelled
        and keeps its partial file for the next start."""
        if self.queue is not None:
            self.queue.close(cancel_running=True, timeout=5.0)
            self.queue = None
