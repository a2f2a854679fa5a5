"""The window's Server toggle: serves the model loaded in the window through the OpenAI API.

The server (engine.serve.server) talks to the window's own runtime, so clients share the model the
user already loaded, with its parallel sequences (Memory → Cache & split → Parallel sequences):
one sequence per client, the rest waiting their turn. It reads the bridge's host and model each
request, so loading another model or restarting the runtime needs no restart of the server.

uvicorn runs on its own thread, and starting (binding, waiting for readiness) and stopping
(waiting for open streams to end) run in the background too (``app.background``): the GUI
thread never waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QWidget

from app.background import run_in_background
from app.bridges.runtime_bridge import RuntimeBridge
from engine.core.errors import KvDeckError
from engine.core.memory_types import PlanSettings

if TYPE_CHECKING:  # imported when the server starts: uvicorn and the API cost ~0.2 s of start-up
    from engine.serve.server import ApiServer, ServedModel

DEFAULT_PORT = 8080
PORT_SETTING, KEY_SETTING = "server_port", "server_api_key"  # chat-store settings (Server settings…)


class ServerToggle(QObject):
    urlChanged = Signal(str)  # the base URL while serving, "" when stopped
    problem = Signal(str)  # one line for the window's banner

    def __init__(
        self, bridge: RuntimeBridge, parent: QWidget, port: int = DEFAULT_PORT, api_key: str = ""
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.port = port
        self.api_key = api_key
        self.server: ApiServer | None = None
        self.url = ""
        self.action = QAction("Serve the loaded model (OpenAI API)", parent, checkable=True)
        self.action.setToolTip(
            "Other programs can use the loaded model at http://127.0.0.1:PORT/v1; "
            "each client gets one of the model's parallel sequences"
        )
        self.action.toggled.connect(self._toggled)

    def configure(self, port: int, api_key: str) -> None:
        """New port and key (Server settings…); a running server restarts with them."""
        changed = (port, api_key) != (self.port, self.api_key)
        self.port, self.api_key = port, api_key
        if changed and self.server is not None:
            self.stop()
            self.start()

    def _slots(self) -> int:
        params = self.bridge.last_params
        return max(1, params.settings.n_seq_max) if params is not None else 1

    def served_model(self) -> ServedModel:
        """What the server reads on each request: the bridge's current host, model, settings and
        per-sequence occupancy (so /v1/kvdeck/memory plans with the settings the model was loaded
        with and shows each sequence's fill, as under ``kvdeck serve``)."""
        from engine.serve.server import ServedModel

        bridge = self.bridge

        def settings() -> PlanSettings | None:
            params = bridge.last_params
            return params.settings if params is not None else None

        return ServedModel(
            host=lambda: bridge.host,
            loaded=lambda: bridge.loaded_info,
            slots=self._slots,
            settings=settings,
            slots_state=lambda: bridge.last_slots,
        )

    def _set_checked(self, on: bool) -> None:
        self.action.blockSignals(True)
        self.action.setChecked(on)
        self.action.blockSignals(False)

    def _toggled(self, on: bool) -> None:
        if on:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Serve on 127.0.0.1 (the default port, or any free one when it is taken)."""
        if self.bridge.loaded_info is None:
            self._set_checked(False)
            self.problem.emit("Load a model before starting the API server.")
            return
        model = self.served_model()
        self._set_checked(True)
        self.action.setEnabled(False)  # until it has started or failed

        run_in_background(
            _start_server,
            model,
            self.port,
            self.api_key,
            parent=self,
            name="kvdeck-api-start",
            on_result=self._on_started,
            on_error=self._on_failed,
        )

    def _on_started(self, started: tuple[ApiServer, str]) -> None:
        server, url = started
        self.action.setEnabled(True)
        if not self.action.isChecked():  # switched off while it was starting
            run_in_background(server.stop, parent=self, name="kvdeck-api-stop")
            return
        self.server, self.url = server, url
        self.urlChanged.emit(url)

    def _on_failed(self, exc: BaseException) -> None:
        self.action.setEnabled(True)
        self._set_checked(False)
        self.problem.emit(f"The API server did not start: {exc}")

    def stop(self) -> None:
        server, self.server = self.server, None
        self._set_checked(False)
        self.url = ""
        self.urlChanged.emit("")
        if server is not None:  # waits for open streams to end; errors go to the log
            run_in_background(server.stop, parent=self, name="kvdeck-api-stop")


def _start_server(model: ServedModel, port: int, api_key: str = "") -> tuple[ApiServer, str]:
    """Bind ``port``, or any free port when it is taken; the last refusal when neither works."""
    from engine.serve.server import ApiServer, ServerConfig

    try:
        server = ApiServer(model, ServerConfig(port=port, api_key=api_key))
        return server, server.start()
    except KvDeckError:
        if port == 0:
            raise
    server = ApiServer(model, ServerConfig(port=0, api_key=api_key))
    return server, server.start()
