"""The Machines dock: llama.cpp RPC workers this window knows, and sharing this machine's GPU.

The list holds worker endpoints (kept in the settings); while the dock is shown, every few seconds
each worker is probed off the GUI thread (engine.runtime.workers: a handshake and its devices'
free memory, ``RPC_CMD_GET_DEVICE_MEMORY``) and its row shows each device's free and total memory,
or in words why it cannot be used: nothing listening, busy with another client (a worker serves
one at a time), another protocol version.

"Share this machine's GPU" starts a worker here (engine.runtime.worker_process) on loopback and
shows who is connected to it; it ends with the window (the worker exits with its parent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from engine.core.errors import KvDeckError
from engine.core.memory_types import Device
from engine.core.units import format_bytes
from engine.runtime.host import RuntimeHost
from engine.runtime.worker_process import WorkerProcess
from engine.runtime.workers import DEFAULT_PORT, PROTOCOL, WorkerInfo, parse_endpoints, probe

WORKERS_SETTING = "rpc_workers"
USE_SETTING = "rpc_workers_used"
REFRESH_MS = 3000


def probe_states(endpoints: list[str], runtime: RuntimeHost | None = None) -> dict[str, WorkerInfo | str]:
    """Each worker's devices, or the sentence saying why it cannot be used (runs off the GUI
    thread). The workers ``runtime`` holds are asked through it: a worker serves one client at a
    time, so a probe of our own runtime's worker would only find it busy."""
    out: dict[str, WorkerInfo | str] = {}
    held = runtime.rpc if runtime is not None and runtime.running else ()
    if held:
        try:
            rows = runtime.remote_memory(timeout=5.0) if runtime is not None else []
        except KvDeckError:  # busy with a long request: the next refresh asks again
            rows = []
        for e in held:
            devices = tuple(
                Device(r["name"], "gpu", r["total_bytes"], r["free_bytes"], f"worker {e}", endpoint=e)
                for r in rows
                if r["endpoint"] == e
            )
            out[e] = (
                WorkerInfo(e, PROTOCOL, devices) if devices else f"worker {e} is in use by the loaded model"
            )
    for e in endpoints:
        if e in out:
            continue
        try:
            out[e] = probe(e, timeout=2.0)
        except KvDeckError as exc:
            out[e] = str(exc)
    return out


def _start_worker(port: int) -> WorkerProcess:
    worker = WorkerProcess("127.0.0.1", port)
    worker.start()
    return worker


class MachinesDock(QDockWidget):
    #: The workers the next model load should use changed (tuple of endpoints).
    workersChanged = Signal(object)

    def __init__(
        self, store: Any, parent: QWidget | None = None, runtime: Callable[[], Any] = lambda: None
    ) -> None:
        """``runtime``: the window's runtime host now (or None), whose workers are asked through it."""
        super().__init__("Machines", parent)
        self.setObjectName("machines")
        self.store = store
        self._runtime = runtime
        self.endpoints: list[str] = list(store.get_setting(WORKERS_SETTING, []) or [])
        self.sharing: WorkerProcess | None = None
        self._probing = False
        self._probed: list[str] = []  # the endpoints the probe under way was given
        self._states: dict[str, WorkerInfo | str] = {}  # the last probe of each worker
        self._note = ""  # the last thing the user did wrong, kept across refreshes until they act
        body = QWidget(self)
        layout = QVBoxLayout(body)
        row = QHBoxLayout()
        self.entry = QLineEdit(body)
        self.entry.setPlaceholderText(f"worker HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT}")
        self.entry.returnPressed.connect(self.add_from_entry)
        self.entry.setToolTip("A machine running `kvdeck worker`; Enter adds it")
        self.add_button = QPushButton("Add", body)
        self.add_button.setToolTip("Add this worker to the list (its memory is checked every few seconds)")
        self.add_button.clicked.connect(lambda: self.add_from_entry())
        self.remove_button = QPushButton("Remove", body)
        self.remove_button.setToolTip("Remove the selected worker from the list (Delete)")
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        row.addWidget(self.entry, 1)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        layout.addLayout(row)
        self.tree = QTreeWidget(body)
        self.tree.setHeaderLabels(["Worker / device", "Free", "Total"])
        self.tree.setRootIsDecorated(True)
        header = self.tree.header()  # names like RPC0[192.168.1.20:50052] get the room; sizes fit
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.installEventFilter(self)  # Delete removes the selected worker
        layout.addWidget(self.tree, 1)
        self.use_box = QCheckBox("Use these workers for the models I load", body)
        self.use_box.setChecked(bool(store.get_setting(USE_SETTING, False)))
        self.use_box.setToolTip(
            "Models loaded from now on spread their layers over the workers that answer (Cache & split)"
        )
        self.use_box.toggled.connect(self._on_use)
        layout.addWidget(self.use_box)
        self.status = QLabel("", body)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.share_button = QPushButton("Share this machine's GPU", body)
        self.share_button.setCheckable(True)
        self.share_button.setToolTip(
            "Run a llama.cpp RPC worker here, on 127.0.0.1 only, until you switch it off or quit"
        )
        self.share_button.toggled.connect(self.set_sharing)
        layout.addWidget(self.share_button)
        self.share_state = QLabel("Not shared.", body)
        self.share_state.setWordWrap(True)
        layout.addWidget(self.share_state)
        self.setWidget(body)
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.visibilityChanged.connect(self._on_visible)
        self._show_rows(self._states)
        if self.use_box.isChecked():
            self.refresh()  # the workers a load will use, before the dock is ever shown

    # ------------------------------------------------------------------ the list
    def add_from_entry(self) -> None:
        try:
            new = parse_endpoints(self.entry.text())
        except KvDeckError as exc:
            self._tell(str(exc).replace("--rpc: ", ""))
            return
        if not new:
            self._tell(f"Type a worker's address as HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT}).")
            return
        self._note = ""
        self.endpoints += [e for e in new if e not in self.endpoints]
        self.entry.clear()
        self._save()
        self.refresh()

    def remove_selected(self) -> None:
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        if item is None:
            self._tell("Select a worker to remove.")
            return
        self._note = ""
        self.endpoints = [e for e in self.endpoints if e != item.text(0)]
        self._save()
        self._show_rows(self._states)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802  (Qt's name)
        if (
            watched is self.tree
            and isinstance(event, QKeyEvent)
            and event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace)
        ):
            self.remove_selected()
            return True
        return super().eventFilter(watched, event)

    def _tell(self, line: str) -> None:
        """One line about the user's last action; it stays until they act again (the refresh
        every few seconds redraws the list, not this)."""
        self._note = line
        self.status.setText(line)

    def _save(self) -> None:
        self.store.set_setting(WORKERS_SETTING, self.endpoints)

    def _on_visible(self, visible: bool) -> None:
        if visible:
            self.refresh()
            self.timer.start()
        else:
            self.timer.stop()

    def refresh(self) -> None:
        self._show_rows(self._states)
        if self._probing or not self.endpoints:
            return
        self._probing = True
        self._probed = list(self.endpoints)
        run_in_background(
            probe_states,
            list(self.endpoints),
            self._runtime(),
            parent=self,
            on_result=self._on_states,
            on_error=lambda exc: self._on_states({}),
            name="kvdeck-machines",
        )

    def _on_states(self, states: dict[str, WorkerInfo | str]) -> None:
        self._probing = False
        before = self.active_workers()
        self._states = states
        self._show_rows(states)
        self._show_share()
        if self.active_workers() != before:
            self.workersChanged.emit(self.active_workers())
        if any(e not in self._probed for e in self.endpoints):  # added while that probe ran
            self.refresh()

    def _show_rows(self, states: dict[str, WorkerInfo | str]) -> None:
        self.tree.clear()
        for e in self.endpoints:
            state = states.get(e)
            top = QTreeWidgetItem([e, "", ""])
            self.tree.addTopLevelItem(top)
            if isinstance(state, WorkerInfo):
                for d in state.devices:
                    QTreeWidgetItem(top, [d.name, format_bytes(d.free_bytes), format_bytes(d.total_bytes)])
                top.setExpanded(True)
            elif isinstance(state, str):
                why = state.removeprefix(f"worker {e} ").capitalize()
                row = QTreeWidgetItem(top, [why, "", ""])
                row.setFirstColumnSpanned(True)  # a sentence, not a device: the whole width
                row.setToolTip(0, why)
                top.setExpanded(True)
            else:
                top.setText(1, "checking…")
        if self._note or self.endpoints:
            self.status.setText(self._note)
        else:
            self.status.setText("No workers yet: add one that runs `kvdeck worker`.")

    # ------------------------------------------------------------------ workers for models
    def _on_use(self, on: bool) -> None:
        self.store.set_setting(USE_SETTING, on)
        self.workersChanged.emit(self.active_workers())

    def active_workers(self) -> tuple[str, ...]:
        """The workers a load should use: the listed ones that answered the last probe."""
        if not self.use_box.isChecked():
            return ()
        return tuple(e for e in self.endpoints if isinstance(self._states.get(e), WorkerInfo))

    def remote_devices(self) -> list[Device]:
        """The active workers' devices as of the last probe (no network on the GUI thread)."""
        out: list[Device] = []
        for e in self.active_workers():
            state = self._states[e]
            assert isinstance(state, WorkerInfo)
            out += state.devices
        return out

    def drop_workers(self, lost: tuple[str, ...]) -> None:
        """Workers that went away: shown as such until a probe finds them again."""
        self._states = {**self._states, **{e: f"worker {e} went away" for e in lost}}
        self._show_rows(self._states)
        self.workersChanged.emit(self.active_workers())

    # ------------------------------------------------------------------ sharing
    def set_sharing(self, on: bool) -> None:
        if on and self.sharing is None:
            self.share_state.setText("Starting a worker on 127.0.0.1…")
            run_in_background(
                _start_worker,
                DEFAULT_PORT,
                parent=self,
                on_result=self._on_shared,
                on_error=self._on_share_failed,
                name="kvdeck-share",
            )
        elif not on and self.sharing is not None:
            self.sharing.stop()
            self.sharing = None
            self.share_state.setText("Not shared.")

    def _on_shared(self, worker: WorkerProcess) -> None:
        if not self.share_button.isChecked():  # switched off while it started
            worker.stop()
            return
        self.sharing = worker
        self._show_share()

    def _on_share_failed(self, exc: BaseException) -> None:
        self.share_button.blockSignals(True)
        self.share_button.setChecked(False)
        self.share_button.blockSignals(False)
        self.share_state.setText(" ".join(str(exc).split()) if isinstance(exc, KvDeckError) else repr(exc))

    def _show_share(self) -> None:
        w = self.sharing
        if w is None:
            return
        if not w.running:
            self.sharing = None
            self.share_button.setChecked(False)
            self.share_state.setText("The worker stopped.")
            return
        devices = ", ".join(f"{d.name} ({format_bytes(d.free_bytes)} free)" for d in w.devices)
        peers = w.peers()
        who = "connected: " + ", ".join(peers) if peers else "nobody is connected"
        self.share_state.setText(f"Sharing {devices} on {w.endpoint} (this machine only); {who}.")

    def stop_sharing(self) -> None:
        if self.sharing is not None:
            self.sharing.stop()
            self.sharing = None
