"""app.background: the one way the window runs work off the GUI thread."""

from __future__ import annotations

import logging
import threading

import pytest
from PySide6.QtCore import QCoreApplication, QObject, QThread
from PySide6.QtWidgets import QWidget

from app.background import Worker, gui_thread_callback, run_in_background


def _on_gui_thread() -> bool:
    return QThread.currentThread() is QCoreApplication.instance().thread()


def test_result_and_progress_arrive_on_the_gui_thread(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    seen: list[tuple[str, object, bool, str]] = []

    def work(n: int, report) -> int:  # noqa: ANN001
        for i in range(n):
            report(i)
        return threading.current_thread().name == "sum-worker" and n * 10

    worker = Worker(work, 3, parent=owner, name="sum-worker", with_report=True)
    worker.progress.connect(lambda v: seen.append(("progress", v, _on_gui_thread(), "")))
    worker.result.connect(lambda v: seen.append(("result", v, _on_gui_thread(), "")))
    with qtbot.waitSignal(worker.finished):
        worker.start()
    assert seen == [
        ("progress", 0, True, ""),
        ("progress", 1, True, ""),
        ("progress", 2, True, ""),
        ("result", 30, True, ""),
    ]
    assert worker.wait(5) and not worker.running
    with pytest.raises(RuntimeError):
        worker.start()  # one call per worker


def test_an_exception_reaches_the_error_handler_on_the_gui_thread(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    got: list[tuple[BaseException, bool]] = []
    results: list[object] = []

    def broken() -> None:
        raise ValueError("bad header")

    worker = run_in_background(
        broken,
        parent=owner,
        on_result=results.append,
        on_error=lambda exc: got.append((exc, _on_gui_thread())),
    )
    qtbot.waitSignal(worker.finished).wait()
    assert results == []
    assert len(got) == 1 and isinstance(got[0][0], ValueError) and got[0][1]


def test_an_unhandled_exception_is_logged_with_its_traceback(qtbot, caplog):
    owner = QWidget()
    qtbot.addWidget(owner)

    def broken() -> None:
        raise KeyError("nobody listens")

    with caplog.at_level(logging.ERROR, logger="app.background"):
        worker = Worker(broken, parent=owner, name="lonely")
        with qtbot.waitSignal(worker.finished):
            worker.start()
    [record] = caplog.records
    assert "lonely failed" in record.getMessage() and record.exc_info[0] is KeyError


def test_owner_deleted_while_the_call_runs(qtbot, caplog):
    """The late result is dropped without touching the deleted worker; a late error is logged."""
    release = threading.Event()
    results: list[object] = []

    def slow(outcome: str) -> str:
        release.wait(30)
        if outcome == "error":
            raise OSError("disk went away")
        return outcome

    owner = QWidget()
    ok = run_in_background(slow, "ok", parent=owner, on_result=results.append, name="slow-ok")
    bad = run_in_background(
        slow, "error", parent=owner, on_result=results.append, on_error=results.append, name="slow-bad"
    )
    relays = [QCoreApplication.instance().findChild(QObject, f"relay:{w.objectName()}") for w in (ok, bad)]
    assert all(r is not None for r in relays)
    with qtbot.waitSignal(owner.destroyed):
        owner.deleteLater()
    with caplog.at_level(logging.ERROR, logger="app.background"):
        with qtbot.waitSignals([r.destroyed for r in relays]):
            release.set()  # both threads now deliver to a worker that no longer exists
    assert results == []
    assert ["background work slow-bad failed after its owner was deleted"] == [
        r.getMessage() for r in caplog.records
    ]


def test_gui_thread_callback_from_an_engine_thread(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    seen: list[tuple[int, bool]] = []
    forward = gui_thread_callback(lambda v: seen.append((v, _on_gui_thread())), owner)
    thread = threading.Thread(target=lambda: [forward(i) for i in range(3)])
    thread.start()
    thread.join(5)
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5_000)  # the queued calls, in order
    assert seen == [(0, True), (1, True), (2, True)]
