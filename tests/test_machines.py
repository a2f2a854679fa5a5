"""The Machines dock: workers added by address show each device's free memory live, a worker that
cannot be used says why in words, and "Share this machine's GPU" starts a worker here and shows
who is connected."""

from __future__ import annotations

from pathlib import Path

from app.machines.dock import WORKERS_SETTING, MachinesDock
from engine.protocol import LoadParams
from engine.storage.store import ChatStore
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
    assert dock.store.get_setting(WORKERS_SETTING) == [f"127.0.0.1:{port}"]
    dock.tree.setCurrentItem(dock.tree.topLevelItem(0))
    dock.remove_selected()
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
