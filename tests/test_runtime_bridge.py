"""app.bridges.runtime_bridge with the real runtime child: events change its state on the GUI thread only."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QCoreApplication, Qt, QThread

from app.bridges.runtime_bridge import RuntimeBridge
from engine import protocol as P
from engine.core.memory_types import PlanSettings

pytestmark = pytest.mark.slow
TIMEOUT_MS = 60_000


def _on_gui_thread() -> bool:
    return QThread.currentThread() is QCoreApplication.instance().thread()


def test_an_error_that_answers_at_once_ends_busy_on_the_gui_thread(qtbot, tmp_path):
    """The child refuses a missing file as soon as it reads the request. The answer must be
    handled on the GUI thread, after the bridge stored the request's id: on the reader thread it
    raced with that store, and a lost error left the window busy for good."""
    bridge = RuntimeBridge()
    failed: list[tuple[str, bool, bool]] = []
    busy: list[tuple[bool, bool]] = []
    # direct connections: the slots run on whichever thread the bridge emits from
    bridge.loadFailed.connect(
        lambda m: failed.append((m, _on_gui_thread(), bridge.loading)), Qt.ConnectionType.DirectConnection
    )
    bridge.busyChanged.connect(
        lambda b: busy.append((b, _on_gui_thread())), Qt.ConnectionType.DirectConnection
    )
    try:
        for i in range(3):
            missing = tmp_path / f"gone-{i}.gguf"
            with qtbot.waitSignal(bridge.loadFailed, timeout=TIMEOUT_MS):
                bridge.load(P.LoadParams(path=str(missing)))
            assert not bridge.loading and bridge.loaded_info is None
    finally:
        bridge.shutdown()
    assert [(m.startswith("model file not found"), gui, loading) for m, gui, loading in failed] == [
        (True, True, False)
    ] * 3
    assert busy == [(True, True), (False, True)] * 3


def test_a_refused_generate_is_answered_on_the_gui_thread(qtbot, smollm2_path):
    """A reply longer than the context is refused at once; the chat is not left waiting."""
    bridge = RuntimeBridge()
    try:
        with qtbot.waitSignal(bridge.loaded, timeout=TIMEOUT_MS):
            bridge.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=256), n_threads=1))
        threads: list[bool] = []
        bridge.generationFailed.connect(
            lambda _m: threads.append(_on_gui_thread()), Qt.ConnectionType.DirectConnection
        )
        from engine.core.sampling import SamplingParams

        with qtbot.waitSignal(bridge.generationFailed, timeout=TIMEOUT_MS) as refused:
            assert bridge.generate("word " * 2000, SamplingParams(), max_tokens=8)
        assert refused.args[0] and threads == [True] and not bridge.generating
    finally:
        bridge.shutdown()
