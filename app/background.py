"""Background work for the window: a call runs on a thread, and its outcome arrives on the GUI thread.

Reading a multi-GB file, checking a draft pair in a throwaway runtime, scanning disks and
starting a server all take too long for the GUI thread, and widgets may only be touched on the
GUI thread. Every such job in ``app`` goes through :func:`run_in_background`:

* the call runs on a daemon thread (a stuck disk or child never blocks quitting);
* its result, its exception and any progress it reports reach the GUI thread as queued
  signals of a :class:`Worker`, never re-entrantly and never on the worker thread;
* an exception is never lost: it goes to the ``error`` signal, or, when nobody listens (or the
  worker's owner is gone), to the log with its traceback;
* the worker is a child of the widget that asked, so deleting that widget while the call runs
  simply drops the late result: the thread only ever emits on a private relay object owned by
  the application, which outlives the worker and is deleted on the GUI thread once it has
  delivered the last word.

:func:`gui_thread_callback` is the same relay for engine threads that report repeatedly (the
telemetry sampler): a plain callable, safe to call from any thread.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QCoreApplication, QMetaMethod, QObject, Qt, Signal, Slot

log = logging.getLogger(__name__)

Report = Callable[[object], None]


class Worker(QObject):
    """One call on a background thread. Connect before :meth:`start`; every signal is emitted on
    the GUI thread. ``finished`` follows ``result`` or ``error``. The worker lives as long as its
    parent (a small QObject per finished job, and it drops its call's arguments when the thread
    takes them): a ``deleteLater`` after ``finished`` segfaulted in ``~QObject`` under PySide
    6.12 in the precision check, cause not found. :attr:`running` and :meth:`wait` keep working
    after the parent deleted it."""

    result = Signal(object)
    error = Signal(object)  # the exception (BaseException)
    progress = Signal(object)  # whatever the call passes to ``report``
    finished = Signal()

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        parent: QObject | None = None,
        name: str = "kvdeck-worker",
        with_report: bool = False,
        **kwargs: Any,
    ) -> None:
        """``with_report``: call ``fn(*args, report=..., **kwargs)``, where ``report(value)`` (safe
        from the worker thread) emits ``progress(value)`` on the GUI thread."""
        super().__init__(parent)
        self.setObjectName(name)
        self._call: Callable[..., Any] | None = functools.partial(fn, *args, **kwargs)
        self._with_report = with_report
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Is the call still running on its thread (its outcome may still be on its way)?"""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Worker:
        """Start the call once, from the GUI thread; returns self for chaining."""
        if self._call is None:
            raise RuntimeError(f"{self.objectName()} was already started")
        relay = _Relay(self)
        call, self._call = self._call, None  # the thread's now: a finished worker holds no arguments
        self._thread = threading.Thread(
            target=_run, args=(call, relay, self._with_report), name=self.objectName(), daemon=True
        )
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Join the thread (for shutdown and tests); True when it has ended. The outcome is still
        delivered by the event loop, not by this call."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running


def run_in_background(
    fn: Callable[..., Any],
    *args: Any,
    parent: QObject | None,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_progress: Callable[[Any], None] | None = None,
    name: str = "kvdeck-worker",
    **kwargs: Any,
) -> Worker:
    """Run ``fn(*args, **kwargs)`` on a thread; the handlers run on the GUI thread.

    With ``on_progress``, ``fn`` also gets ``report=`` (see :class:`Worker`). Without
    ``on_error``, an exception is logged with its traceback. ``parent`` owns the worker: when it
    is deleted first, the outcome is dropped (an exception is still logged).
    """
    worker = Worker(fn, *args, parent=parent, name=name, with_report=on_progress is not None, **kwargs)
    if on_result is not None:
        worker.result.connect(on_result)
    if on_error is not None:
        worker.error.connect(on_error)
    if on_progress is not None:
        worker.progress.connect(on_progress)
    return worker.start()


def gui_thread_callback(slot: Callable[[Any], None], parent: QObject) -> Report:
    """A callable for engine threads: each call ``cb(value)`` runs ``slot(value)`` later on the GUI
    thread. Calls after ``parent`` has been deleted are dropped."""
    relay = _Forward(parent)
    relay.value.connect(slot, Qt.ConnectionType.QueuedConnection)

    def forward(value: object) -> None:
        try:
            relay.value.emit(value)
        except RuntimeError:  # the parent (and with it the relay) was deleted
            log.debug("a report arrived after its receiver was deleted")

    return forward


class _Forward(QObject):
    value = Signal(object)


class _Relay(QObject):
    """The worker thread's only contact with Qt: it emits these private signals, and the queued
    slots below pass them on to the worker on the GUI thread if it still exists.

    Parented to the application (not the worker), so it lives until the thread has spoken even
    when the worker was deleted, and it is deleted on the GUI thread (``deleteLater``)."""

    progressed = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)

    def __init__(self, worker: Worker) -> None:
        app = QCoreApplication.instance()
        if app is None:
            raise RuntimeError("background work needs a running QApplication")
        super().__init__(app)
        self.setObjectName(f"relay:{worker.objectName()}")
        self._worker = worker
        self._name = worker.objectName()
        queued = Qt.ConnectionType.QueuedConnection
        self.progressed.connect(self._on_progress, queued)
        self.succeeded.connect(self._on_succeeded, queued)
        self.failed.connect(self._on_failed, queued)

    def _alive(self) -> Worker | None:
        worker = self._worker
        return worker if shiboken6.isValid(worker) else None

    def _close(self) -> Worker | None:
        worker, self._worker = self._alive(), None  # type: ignore[assignment]
        self.deleteLater()
        return worker

    @Slot(object)
    def _on_progress(self, value: object) -> None:
        worker = self._alive() if self._worker is not None else None
        if worker is not None:
            worker.progress.emit(value)

    @Slot(object)
    def _on_succeeded(self, value: object) -> None:
        worker = self._close()
        if worker is not None:
            worker.result.emit(value)
            worker.finished.emit()

    @Slot(object)
    def _on_failed(self, exc: BaseException) -> None:
        worker = self._close()
        if worker is not None and worker.isSignalConnected(QMetaMethod.fromSignal(worker.error)):
            worker.error.emit(exc)
        else:
            log.error(
                "background work %s failed%s",
                self._name,
                "" if worker is not None else " after its owner was deleted",
                exc_info=exc,
            )
        if worker is not None:
            worker.finished.emit()


def _run(call: Callable[..., Any], relay: _Relay, with_report: bool) -> None:
    """The thread: the call, then exactly one of succeeded / failed."""
    try:
        value = call(report=relay.progressed.emit) if with_report else call()
    except BaseException as exc:  # noqa: BLE001 - delivered to the GUI thread, never swallowed
        try:
            relay.failed.emit(exc)
        except RuntimeError:  # the application is gone (quitting): the log is all that is left
            log.error("background work failed while the window closed", exc_info=exc)
        return
    try:
        relay.succeeded.emit(value)
    except RuntimeError:
        log.debug("a result arrived after the application quit")
