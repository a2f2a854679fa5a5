"""The Machines dock: workers added by address show each device's free memory live, a worker that
cannot be used says why in words, and "Share this machine's GPU" starts a worker here and shows
who is connected."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from PySide6.QtCore import Qt

from app.machines.dock import WORKERS_SETTING, MachinesDock, probe_states
from engine.protocol import LoadParams
from engine.runtime.workers import WorkerInfo
from engine.storage.store import ChatStore
from tests.helpers.gui import LOAD_TIMEOUT_MS, new_window
from tests.helpers.rpc_workers import free_port, needs_rpc, workers
from tests.helpers.runtime_host import running_host


def _dock(qtbot, tmp_path: Path) -> MachinesDock:  # noqa: ANN001
    dock = MachinesDock(ChatStore(tmp_path / "chat.sqlite3"))
    qtbot.addWidget(dock)
    return dock


def _rows(dock: MachinesDock) -> dict[str, list[list[str]]]:
    out = {}
    for i in range(dock.tree.topLevelItemCount()):
        top = dock.tree.topLevelItem(i)
        out[top.text(0)] = [[top.child(j).text(c) for c in range(3)] for j in range(top.childCount())]
    return out


def test_a_bad_address_is_one_line_and_a_silent_port_is_shown_in_words(qtbot, tmp_path: Path) -> None:  # noqa: ANN001
    dock = _dock(qtbot, tmp_path)
    dock.entry.setText("my-gpu-box")
    dock.add_from_entry()
    assert dock.endpoints == []
    assert "is not HOST:PORT" in dock.status.text()
    port = free_port()
    dock.entry.setText(f"127.0.0.1:{port}")
    dock.add_from_entry()
    qtbot.waitUntil(lambda: bool(_rows(dock)[f"127.0.0.1:{port}"]), timeout=10_000)
    assert _rows(dock)[f"127.0.0.1:{port}"] == [
        ["Refused the connection: nothing is listening there", "", ""]
    ]
    why = dock.tree.topLevelItem(0).child(0)
    assert why.isFirstColumnSpanned() and why.toolTip(0) == why.text(0)  # the sentence is never cut short
    # a mistake stays said while the list refreshes around it, until the user acts again
    dock.entry.setText("my-gpu-box:port")
    dock.add_from_entry()
    said = dock.status.text()
    assert "my-gpu-box:port" in said and "\n" not in said and dock.entry.text() == "my-gpu-box:port"
    dock.refresh()  # redraws the list at once, then probes
    assert dock.status.text() == said
    assert dock.store.get_setting(WORKERS_SETTING) == [f"127.0.0.1:{port}"]
    # removed from the keyboard: Delete on the selected worker
    dock.tree.setCurrentItem(dock.tree.topLevelItem(0).child(0))  # its line: the worker goes
    qtbot.keyClick(dock.tree, Qt.Key.Key_Delete)
    assert dock.endpoints == [] and dock.store.get_setting(WORKERS_SETTING) == []


@needs_rpc
def test_a_worker_shows_its_device_memory_and_then_that_it_is_busy(
    qtbot, tmp_path: Path, smollm2_path: Path
) -> None:  # noqa: ANN001
    dock = _dock(qtbot, tmp_path)
    with workers(1) as (w,):
        dock.entry.setText(w.endpoint)
        dock.add_from_entry()
        qtbot.waitUntil(lambda: bool(_rows(dock)[w.endpoint]), timeout=10_000)
        ((name, free, total),) = _rows(dock)[w.endpoint]
        assert name == f"RPC0[{w.endpoint}]" and free.endswith("B") and total.endswith("B")
        # a runtime holding the worker: it serves one client at a time, and the row says so
        with running_host(LoadParams(str(smollm2_path)), rpc=(w.endpoint,)):
            dock.refresh()
            qtbot.waitUntil(lambda: "another program" in str(_rows(dock)[w.endpoint]), timeout=15_000)


@needs_rpc
def test_sharing_this_machine_starts_a_worker_and_shows_who_is_connected(
    qtbot, tmp_path: Path, smollm2_path: Path
) -> None:  # noqa: ANN001
    dock = _dock(qtbot, tmp_path)
    dock.share_button.setChecked(True)
    qtbot.waitUntil(lambda: dock.sharing is not None, timeout=30_000)
    assert dock.sharing is not None
    endpoint = dock.sharing.endpoint
    assert "nobody is connected" in dock.share_state.text()
    with running_host(LoadParams(str(smollm2_path)), rpc=(endpoint,)):
        dock._show_share()
        assert "connected: 127.0.0.1:" in dock.share_state.text()
    dock.share_button.setChecked(False)
    assert dock.sharing is None and dock.share_state.text() == "Not shared."


@needs_rpc
def test_the_window_loads_onto_a_listed_worker_and_carries_on_without_it_when_it_dies(
    qtbot,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
    smollm2_path: Path,
) -> None:
    with workers(1) as (w,):
        win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path, max_tokens=200)
        win.machines.entry.setText(w.endpoint)
        win.machines.add_from_entry()
        with qtbot.waitSignal(win.machines.workersChanged, timeout=15_000):
            win.machines.use_box.setChecked(True)
        qtbot.waitUntil(lambda: win.bridge.workers == (w.endpoint,), timeout=15_000)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.start()
        device = f"RPC0[{w.endpoint}]"
        assert win.memory.measured is not None and win.memory.measured.bytes_for(device, "weights") > 0
        # the worker serves only our runtime now: its live memory comes through the runtime
        state = probe_states([w.endpoint], win.bridge.host)[w.endpoint]
        assert isinstance(state, WorkerInfo), state
        assert [d.name for d in state.devices] == [device] and state.devices[0].free_bytes > 0
        # the worker dies while a reply streams: named in the banner, the model is back without it
        win.chat.input.setPlainText("Write a long story about a dragon who learns to bake bread.")
        with qtbot.waitSignal(win.bridge.delta, timeout=LOAD_TIMEOUT_MS):
            qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            os.kill(w.pid or 0, signal.SIGKILL)
    assert f"worker {w.endpoint} went away while decoding" in win.banner.label.text()
    assert win.bridge.workers == () and win.bridge.host is not None and win.bridge.host.rpc == ()
    assert win.memory.measured is not None and win.memory.measured.bytes_for(device) == 0
    reply = win.store.messages(win.chat.conversation_id)[-1]
    assert reply.role == "assistant" and reply.content.strip()  # the partial reply is kept


@needs_rpc
def test_workers_appear_in_the_split_editor_by_endpoint_and_the_load_follows_it(
    qtbot,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
    smollm2_path: Path,
) -> None:
    with workers(2) as ws:
        win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.start()
        panel = win.memory.cache
        for w in ws:
            win.machines.entry.setText(w.endpoint)
            win.machines.add_from_entry()
        win.machines.use_box.setChecked(True)
        qtbot.waitUntil(lambda: win.bridge.workers == tuple(w.endpoint for w in ws), timeout=15_000)
        qtbot.waitUntil(lambda: len(panel.ratios) == 2, timeout=15_000)
        assert [b.prefix() for b in panel.ratios] == [f"{w.endpoint}: " for w in ws]
        assert all(
            b.toolTip().startswith(f"RPC0[{w.endpoint}]") for b, w in zip(panel.ratios, ws, strict=True)
        )
        assert all(b.value() > 0 for b in panel.ratios)  # llama.cpp's default: free memory
        panel.ratios[0].setValue(1.0)  # the first worker gets a quarter of the layers
        panel.ratios[1].setValue(3.0)
        assert panel.settings().tensor_split == (1.0, 3.0)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            panel.apply.click()
        measured = win.memory.measured
        assert measured is not None
        first, second = (measured.bytes_for(f"RPC0[{w.endpoint}]", "kv") for w in ws)
        assert 0 < first < second  # the split the editor showed is the one loaded
        win.close()
