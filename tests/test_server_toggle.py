"""The window's Server toggle (app.bridges.server_toggle) with the real runtime child and SmolLM2.

The memory view over HTTP must show what the window loaded: the plan made with the window's own
settings (not the defaults) and the fill of each of its parallel sequences, as under
``kvdeck serve``.
"""

from __future__ import annotations

import httpx
import pytest
from PySide6.QtWidgets import QWidget

from app.bridges.runtime_bridge import RuntimeBridge
from app.bridges.server_toggle import ServerToggle
from engine import protocol as P
from engine.core.memory_types import PlanSettings

pytestmark = pytest.mark.slow
TIMEOUT_MS = 120_000
SLOTS = 2


def test_the_memory_view_shows_the_windows_settings_and_sequences(qtbot, smollm2_path):
    bridge = RuntimeBridge()
    parent = QWidget()
    toggle = ServerToggle(bridge, parent, port=0)
    settings = PlanSettings(n_ctx=1024, n_seq_max=SLOTS)
    try:
        with qtbot.waitSignal(bridge.loaded, timeout=TIMEOUT_MS):
            bridge.load(P.LoadParams(path=str(smollm2_path), settings=settings, n_threads=1))
        with qtbot.waitSignal(toggle.urlChanged, timeout=TIMEOUT_MS) as started:
            toggle.start()
        url = started.args[0]
        with qtbot.waitSignal(bridge.kvSlots, timeout=TIMEOUT_MS):  # the reply's occupancy arrives
            r = httpx.post(
                f"{url}/v1/completions",
                json={"model": "any", "prompt": "The river", "max_tokens": 2, "temperature": 0},
                timeout=120,
            )
        assert r.status_code == 200
        data = httpx.get(f"{url}/v1/kvdeck/memory", timeout=60).json()
        assert data["plan"]["settings"] == settings.to_dict()
        assert data["plan"]["n_ctx_seq"] == 1024 // SLOTS
        assert [s["seq"] for s in data["sequences"]] == list(range(SLOTS))
        assert all(s["n_ctx_seq"] == 1024 // SLOTS for s in data["sequences"])
    finally:
        with qtbot.waitSignal(toggle.urlChanged, timeout=TIMEOUT_MS, raising=False):
            toggle.stop()
        bridge.shutdown()
        parent.deleteLater()
