"""A download queue a GUI can drive: add models, watch progress, cancel, all without blocking.

One worker thread downloads one model at a time (parallel downloads only split the same
bandwidth and leave two partial files instead of one finished model). Callbacks run on the
worker thread: a Qt front end forwards them with a queued signal. Cancelling keeps the
partial file, so adding the model again resumes it, unless the cancel discards it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.errors import KvDeckError
from engine.hub.download import Cancelled, Progress, download_model
from engine.hub.names import RemoteModel

_ids = itertools.count(1)
_log = logging.getLogger("kvdeck.hub")


@dataclass
class DownloadJob:
    """One queued model. `state`: queued, running, done, failed, cancelled."""

    model: RemoteModel
    revision: str = "main"
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "queued"
    progress: Progress | None = None
    paths: list[Path] = field(default_factory=list)
    error: str | None = None
    discard: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def path(self) -> Path | None:
        """The file to open (a split model's first part) once done."""
        return self.paths[0] if self.paths else None


JobFn = Callable[[DownloadJob], None]


class DownloadQueue:
    """Queued downloads; `on_change(job)` is called on every state change and progress step."""

    def __init__(self, on_change: JobFn | None = None) -> None:
        self._on_change = on_change
        self._jobs: list[DownloadJob] = []
        self._pending: deque[DownloadJob] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="kvdeck-hub-downloads", daemon=True)
        self._worker.start()

    def add(self, model: RemoteModel, revision: str = "main") -> DownloadJob:
        job = DownloadJob(model, revision)
        with self._cv:
            if self._closed:
                raise KvDeckError("the download queue is closed")
            self._jobs.append(job)
            self._pending.append(job)
            self._cv.notify()
        self._emit(job)
        return job

    def jobs(self) -> list[DownloadJob]:
        with self._cv:
            return list(self._jobs)

    def cancel(self, job: DownloadJob, discard: bool = False) -> None:
        """Stop `job` (queued or running). `discard` also deletes its partial file."""
        with self._cv:
            job.discard = discard
            job.cancel_event.set()
            if job in self._pending:
                self._pending.remove(job)
                job.state = "cancelled"
                job.finished.set()
            else:
                return  # the worker reports it when the transfer stops
        self._emit(job)

    def wait(self, job: DownloadJob, timeout: float | None = None) -> bool:
        return job.finished.wait(timeout)

    def close(self, cancel_running: bool = True, timeout: float | None = 10.0) -> None:
        """Stop taking jobs; cancel what is queued (and running), wait for the worker."""
        with self._cv:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
            running = [j for j in self._jobs if j.state == "running"]
            self._cv.notify_all()
        for job in pending:
            job.state = "cancelled"
            job.finished.set()
        if cancel_running:
            for job in running:
                job.cancel_event.set()
        self._worker.join(timeout)

    def _emit(self, job: DownloadJob) -> None:
        if self._on_change is not None:
            try:
                self._on_change(job)
            except Exception:  # noqa: BLE001  (a broken listener must not kill the queue)
                _log.exception("download listener failed")

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                job.state = "running"
            self._emit(job)
            self._download(job)
            job.finished.set()
            self._emit(job)

    def _download(self, job: DownloadJob) -> None:
        def progress(p: Progress) -> None:
            job.progress = p
            self._emit(job)

        try:
            job.paths = download_model(
                job.model, revision=job.revision, on_progress=progress, cancel=job.cancel_event
            )
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
            if job.discard:
                self._discard(job)
        except KvDeckError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001  (a bug: the job fails, the queue goes on)
            _log.exception("download failed")
            job.state, job.error = "failed", f"internal error ({type(exc).__name__}: {exc})"

    @staticmethod
    def _discard(job: DownloadJob) -> None:
        from engine.hub.download import discard_partial

        for f in job.model.files:
            if f.sha256:
                discard_partial(job.model.repo, f.sha256)
