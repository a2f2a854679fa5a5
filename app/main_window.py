"""The KV Deck main window: sidebar, chat pane, problem banner, status bar with load progress.

Dropping a file anywhere on the window loads it. Every problem (a bad file, a crashed runtime,
a full disk) becomes one line in the banner at the top; the conversation is never touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QResizeEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app import window_state
from app.appinfo import APP_NAME, seconds_since_start
from app.background import run_in_background
from app.banner import Banner
from app.bridges.draft_picker import DraftController
from app.bridges.runtime_bridge import RuntimeBridge
from app.bridges.server_toggle import ServerToggle
from app.chat.chat_pane import ChatPane
from app.hub.pane import HubDock
from app.machines.dock import MachinesDock
from app.memory.memory_dock import MemoryDock
from app.menus import WindowMenus
from app.model_text import model_summary
from app.sidebar import Sidebar
from engine import protocol as P
from engine.core import paths
from engine.core.build import gpu_backend
from engine.core.errors import KvDeckError
from engine.core.memory_types import FitResult, PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import default_settings, fit, pin_split, preflight
from engine.runtime.outcome import ProcessOutcome
from engine.storage.identity import model_key
from engine.storage.store import ChatStore

log = logging.getLogger(__name__)
MAX_RECENT = 12


MEMORY_MIN_WIDTH = 360  # the dashboard's plan table and the cache panel's forms fit (~165 px cut them off)
MEMORY_WIDTH = 420


def check_model_path(path: str) -> str | None:
    """A one-line reason why ``path`` cannot be a model, or None. Cheap: no file is parsed."""
    p = Path(path)
    name = p.name or path
    try:
        if not p.exists():
            return f"{name} does not exist"
        if p.is_dir():
            return f"{name} is a folder, not a GGUF model file"
        if p.suffix.lower() != ".gguf":
            return f"{name} is not a GGUF model (KV Deck opens .gguf files)"
        if not os.access(p, os.R_OK):
            return f"{name} cannot be read (permission denied)"
    except (OSError, ValueError) as exc:  # a NUL byte in a dropped URL, a name too long...
        return f"{name!r} cannot be used as a model path ({exc})"
    return None


def unreadable(path: str, exc: BaseException) -> str:
    """The banner line for a file whose inspection failed: the engine's own sentence, or (a
    parser bug, a hostile file) the file's name and the exception, never a traceback."""
    if isinstance(exc, KvDeckError):
        return str(exc)
    return f"{Path(path).name} could not be read: {exc}"


class MainWindow(QMainWindow):
    def __init__(self, store: ChatStore, bridge: RuntimeBridge | None = None) -> None:
        super().__init__()
        self.store = store
        self.bridge = bridge or RuntimeBridge(self)
        self.model_info: GGUFInfo | None = None
        self._first_load_logged = False
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        #: Numbers every inspection; only the latest one may load its model (a slow read of an
        #: older choice must not replace the model the user picked after it).
        self._inspections = 0

        self.sidebar = Sidebar(store, self)
        self.chat = ChatPane(store, self.bridge, self)
        self.banner = Banner(self)
        right = QWidget(self)
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 6, 6, 0)
        rl.addWidget(self.banner)
        rl.addWidget(self.chat, 1)
        splitter = QSplitter(self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 920])
        self.setCentralWidget(splitter)

        self.model_label = QLabel("No model")
        self.ctx_label = QLabel("")
        self.speed_label = QLabel("")
        self.progress = QProgressBar(self, maximum=1000, textVisible=True)
        self.progress.setFixedWidth(120)  # the file name is in the model label: only "42%" here
        self.progress.setFormat("%p%")
        self.progress.hide()
        bar = self.statusBar()
        bar.addWidget(self.model_label, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.ctx_label)
        bar.addPermanentWidget(self.speed_label)
        self.server_toggle = ServerToggle(self.bridge, self)  # the OpenAI-compatible API server
        self.api_label = QLabel("")
        bar.addPermanentWidget(self.api_label)
        self.server_toggle.port = int(store.get_setting("server_port", self.server_toggle.port))
        self.server_toggle.api_key = str(store.get_setting("server_api_key", ""))
        self.server_toggle.urlChanged.connect(lambda url: self.api_label.setText(url and f"API {url}/v1"))
        self.server_toggle.problem.connect(self.show_problem)

        self.sidebar.newConversation.connect(self._new_conversation)
        self.sidebar.conversationSelected.connect(self._select_conversation)
        self.sidebar.modelChosen.connect(lambda p: p and self.open_model(p))
        self.sidebar.openFileRequested.connect(self.choose_file)
        self.sidebar.getModelsRequested.connect(self.show_hub)
        self.chat.conversationsChanged.connect(
            lambda: self.sidebar.refresh_conversations(self.chat.conversation_id)
        )
        self.chat.problem.connect(self.show_problem)
        self.chat.storeProblem.connect(lambda text: self.show_problem(text, sticky=True))
        self.chat.speed.connect(lambda tps: self.speed_label.setText(f"{tps:.1f} tokens/s"))
        self.chat.copied.connect(lambda text: self.statusBar().showMessage(text, 2000))
        self.chat.largerContextRequested.connect(self.use_larger_context)
        self.sidebar.problem.connect(self.show_problem)
        self.sidebar.conversationDeleted.connect(self._on_conversation_deleted)
        self.bridge.loadProgress.connect(self._on_progress)
        self.bridge.loaded.connect(self._on_loaded)
        self.bridge.loadFailed.connect(self._on_load_failed)
        self.bridge.exited.connect(self._on_runtime_exit)

        self.memory = MemoryDock(self._runtime_pid, self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.memory)
        self.memory.setMinimumWidth(MEMORY_MIN_WIDTH)
        self.resizeDocks([self.memory], [420], Qt.Orientation.Horizontal)
        self.memory.applyRequested.connect(self._apply_settings)
        self.bridge.kvUsed.connect(self.memory.kv_used)
        self.bridge.kvSlots.connect(self.memory.kv_slots)  # one bar per parallel sequence
        self.chat.speed.connect(self.memory.speed)
        self.memory.start()
        self.hub = HubDock(lambda: self.memory.devices()[0], self)  # app.hub: search, verdict, download
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.hub)
        self.tabifyDockWidget(self.memory, self.hub)
        self.memory.raise_()
        self.hub.hide()
        self.hub.pane.modelReady.connect(lambda _path: self.sidebar.refresh_models())
        self.hub.pane.loadRequested.connect(self.open_model)
        self.machines = MachinesDock(store, self, lambda: self.bridge.host)  # app.machines: RPC workers
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.machines)
        self.tabifyDockWidget(self.memory, self.machines)
        self.machines.hide()
        self.memory.remote_devices = self.machines.remote_devices
        self.machines.workersChanged.connect(self._use_workers)
        # speculative decoding: the picker beside the model, checked before loading (app.bridges.draft_picker)
        self.drafting = DraftController(
            self.chat.draft_picker,
            self.bridge,
            store,
            lambda: self.settings,
            lambda: self.memory.devices()[0],
            self,
        )
        self.drafting.problem.connect(self.show_problem)
        self.drafting.draftPlan.connect(self.memory.dashboard.show_draft_plan)
        self.drafting.stats.connect(self.memory.dashboard.show_speculation)
        self.chat.speed.connect(self.drafting.live_speed)
        self.settings: PlanSettings | None = None
        # (info, settings, params) of the loaded model while another one is being loaded
        self._fallback: tuple[GGUFInfo | None, PlanSettings | None, P.LoadParams] | None = None

        window_state.fit_narrow_windows(self)
        self.menus = WindowMenus(self)  # File, Edit, Chat, View, Server, Help, with shortcuts
        self.get_models_action = QAction("&Get models…", self)  # the Hugging Face pane (app.hub)
        self.get_models_action.setShortcut(QKeySequence("Ctrl+Shift+M"))
        self.get_models_action.triggered.connect(self.show_hub)
        self.menus.file_menu.insertAction(self.menus.models_section, self.get_models_action)
        self.about_action = self.menus.about
        window_state.restore(self)

        self.sidebar.refresh_models()
        convs = store.list_conversations()
        self.sidebar.refresh_conversations(convs[0].id if convs else None)
        self.chat.open_conversation(convs[0].id if convs else None)
        self.chat.view.set_placeholder(
            "<h2>Welcome to KV Deck</h2><p>Type a message below to chat with the loaded model, or drop a "
            "<b>.gguf</b> file anywhere on this window to load another one.</p>"
        )

    # ------------------------------------------------------------------ models
    def start(self) -> None:
        """Load the last used model, or the demo model on the very first start."""
        last = self.store.get_setting("last_model")
        if last and Path(last).is_file():
            self.open_model(last)
            return
        demo = paths.demo_model_path()
        if demo is not None:
            self.open_model(str(demo))
        else:
            self.model_label.setText("No model — drop a .gguf file on the window")

    def choose_file(self) -> None:
        start = self.store.get_setting("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", start, "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            try:
                self.chat._write(self.store.set_setting, "last_dir", str(Path(path).parent))
            except KvDeckError as exc:
                self.show_problem(str(exc))
            self.open_model(path)

    def open_model(self, path: str) -> None:
        problem = check_model_path(path)
        if problem:
            self.show_problem(problem)
            return
        self.model_label.setText(f"Reading {Path(path).name}…")
        self._inspections += 1
        ticket = self._inspections
        run_in_background(  # a multi-GB file on a slow disk can take a moment
            inspect_gguf,
            path,
            parent=self,
            name="kvdeck-inspect",
            on_result=lambda info: self._on_inspected(ticket, path, info),
            on_error=lambda exc: self._on_inspected(ticket, path, unreadable(path, exc)),
        )

    def _on_inspected(self, ticket: int, path: str, result: GGUFInfo | str) -> None:
        """An inspection ended (``result`` is the model, or why it cannot be read)."""
        if ticket != self._inspections:
            log.info("%s was read after a newer choice; not loading it", Path(path).name)
            return
        if isinstance(result, str):
            self.show_problem(result)
            self._show_model_state()
            return
        info = result
        saved: dict = {}
        try:
            saved = self.store.get_model_settings(model_key(path)).get("plan", {})
        except KvDeckError:
            pass
        try:
            if saved:
                settings = PlanSettings.from_dict(saved)
            else:
                settings, _fit = default_settings(info, self.memory.devices()[0], plan_fn=analytic_plan)
        except (KvDeckError, TypeError, ValueError) as exc:
            self.show_problem(f"{Path(path).name}: {exc}")
            return
        self._load(path, settings, info)

    def _apply_settings(self, settings: PlanSettings) -> None:
        """The cache panel's "Apply and reload": remember these settings for this model."""
        info = self.model_info
        if info is None:
            return
        try:
            self.store.set_model_settings(model_key(info.path), {"plan": settings.to_dict()})
        except KvDeckError as exc:
            self.show_problem(str(exc))
        self._load(info.path, settings)

    def _load(self, path: str, settings: PlanSettings, info: GGUFInfo | None = None) -> None:
        """Preflight, then load. Nothing about the current model changes until the new one has
        passed every check; if llama.cpp then refuses it, `_on_load_failed` goes back."""
        info = info or self.model_info
        if info is not None:
            try:
                devices, _ = self.memory.devices()
                settings = pin_split(settings, devices)  # workers: the split planned is the one loaded
                preflight(info, settings, devices, gpu_backend(), plan_fn=analytic_plan)
            except KvDeckError as exc:
                self.show_problem(f"{Path(path).name} was not loaded: {exc}")
                self._show_model_state()
                return
        if self.bridge.loaded_info is not None and self.bridge.last_params is not None:
            self._fallback = (self.model_info, self.settings, self.bridge.last_params)
        if info is not self.model_info and info is not None:
            self.memory.model_inspected(info, settings)
        self.model_info, self.settings = info, settings
        params = P.LoadParams(path, settings)
        if not self.banner.sticky:
            self.banner.hide()
        self.progress.setValue(0)
        self.progress.show()
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.bridge.load(params)

    def _on_progress(self, fraction: float) -> None:
        self.progress.setValue(int(fraction * 1000))

    def _on_loaded(self, info: P.Loaded) -> None:
        if not self._first_load_logged:
            self._first_load_logged = True
            log.info(
                "first model ready %.2f s after process start (load %.2f s)",
                seconds_since_start(),
                info.load_s,
            )
        self.progress.hide()
        self._fallback = None
        self._show_model_state()
        try:
            self.chat._write(self.store.set_setting, "last_model", info.path)
            recent = [p for p in self.store.get_setting("recent_models", []) if p != info.path]
            self.chat._write(self.store.set_setting, "recent_models", [info.path] + recent[: MAX_RECENT - 1])
        except KvDeckError as exc:
            self.show_problem(str(exc))
        self.chat.input.setFocus()
        if self.settings is not None:
            self.memory.model_loaded(info, self.settings)

    def _runtime_pid(self) -> int | None:
        host = self.bridge.host
        return host.pid if host is not None and host.running else None

    def _show_model_state(self) -> None:
        info = self.bridge.loaded_info
        if info is None:
            self.model_label.setText("No model loaded")
            self.ctx_label.setText("")
            return
        mode = "chat" if info.chat_template else "completion (base model, no chat template)"
        where = "GPU" if info.gpu_offload and info.n_gpu_layers else "CPU"
        self.model_label.setText(
            f"{Path(info.path).name} · {model_summary(info.description, info.n_params)} · {mode} · {where}"
        )
        self.ctx_label.setText(f"context {info.n_ctx} tokens")

    def _on_load_failed(self, message: str) -> None:
        self.progress.hide()
        self._show_model_state()
        if message:
            self.show_problem(message)
        host = self.bridge.host
        if message and self._fallback is not None and host is not None and host.running:
            self._restore_previous()  # llama.cpp refused the new file: keep the old model

    def _restore_previous(self) -> None:
        """Load the model that was there before a failed load (its settings, its plan)."""
        info, settings, params = self._fallback  # type: ignore[misc]
        self._fallback = None
        if info is not None and settings is not None:
            self.memory.model_inspected(info, settings)
        self.model_info, self.settings = info, settings
        self.progress.setValue(0)
        self.progress.show()
        self.bridge.load(params)

    def _use_workers(self, workers: tuple[str, ...]) -> None:
        self.bridge.workers = workers
        self.memory.workers_changed()

    def _on_runtime_exit(self, outcome: ProcessOutcome) -> None:
        if outcome.lost_workers and self.model_info is not None and self.settings is not None:
            # a worker went away: the reply so far is saved; reload at once without it
            self.machines.drop_workers(outcome.lost_workers)
            self.show_problem(
                f"{outcome.sentence}; the model is reloaded without it. Your conversation is saved."
            )
            self._load(self.model_info.path, self.settings.replace(tensor_split=()), self.model_info)
            return
        self.progress.hide()
        self._show_model_state()
        self.show_problem(
            outcome.sentence + " Your conversation is saved.", "Restart runtime", self.restart_runtime
        )

    def restart_runtime(self) -> None:
        """A fresh runtime with the last good model (not a new file that crashed it)."""
        if self._fallback is not None:
            self._restore_previous()
        elif self.bridge.last_params is not None:
            self.progress.setValue(0)
            self.progress.show()
            self.bridge.reload()

    def show_hub(self) -> None:
        """The "Get models" pane, wide enough for its verdicts, the search field focused."""
        self.hub.show()
        self.hub.raise_()
        QTimer.singleShot(0, self._widen_hub)  # once the dock is laid out (a first show)
        self.hub.pane.query.setFocus()

    def _widen_hub(self) -> None:
        wanted = max(760, self.width() // 2)
        if self.hub.isVisible() and self.hub.width() < wanted:
            self.resizeDocks([self.hub], [wanted], Qt.Orientation.Horizontal)

    # ------------------------------------------------------------------ conversations
    def _new_conversation(self) -> None:
        self.chat.new_conversation()
        self.sidebar.refresh_conversations(None)

    def _select_conversation(self, conv_id: int) -> None:
        self.chat.open_conversation(conv_id)

    def _on_conversation_deleted(self, conv_id: int, title: str) -> None:
        self.show_problem(f"Deleted “{title}”.", "Undo", lambda: self.sidebar.restore(conv_id))

    def use_larger_context(self) -> None:
        """Reload the model with the largest context that fits this machine (engine.plan.fit with
        the current settings and devices); the chat pane then answers the waiting message."""
        info, settings = self.model_info, self.settings
        if info is None or settings is None:
            self.show_problem("No model is loaded: there is no context to make larger.")
            return
        devices = self.memory.devices()[0]
        current = self.bridge.loaded_info.n_ctx if self.bridge.loaded_info else settings.n_ctx
        run_in_background(
            fit,
            info,
            settings,
            devices,
            plan_fn=analytic_plan,
            min_context=min(current + 1, info.n_ctx_train or current + 1),
            parent=self,
            name="kvdeck-fit-larger",
            on_result=lambda result: self._larger_fitted(info, current, result),
            on_error=lambda exc: self.show_problem(f"could not fit a larger context: {exc}"),
        )

    def _larger_fitted(self, info: GGUFInfo, current: int, result: FitResult) -> None:
        if info is not self.model_info:
            return  # another model was chosen meanwhile
        n_ctx = result.settings.n_ctx if result.fits else 0
        if n_ctx <= current:
            limit = (
                "the model's training context"
                if current >= (info.n_ctx_train or 0)
                else "the memory of this machine"
            )
            self.show_problem(
                f"{current:,} tokens is already the largest context that fits "
                f"({limit}): start a new chat or let older messages drop out."
            )
            return
        log.info("reloading %s with a larger context: %d -> %d", info.path, current, n_ctx)
        self._apply_settings(result.settings)

    def show_problem(
        self,
        message: str,
        action_text: str = "",
        action=None,  # noqa: ANN001
        sticky: bool = False,
    ) -> None:
        """One line in the banner; `sticky` ones (about the chat history) survive model loads."""
        self.banner.show_message(message, action_text, action, sticky)

    def show_about(self) -> None:
        from app.about import AboutDialog  # on demand: it reads versions from disk

        dialog = AboutDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802, ANN001
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if not urls:
            return
        event.acceptProposedAction()
        url = urls[0]
        if not url.isLocalFile():
            self.show_problem(f"{url.toString()} is not a local file; download it first, then drop the file")
            return
        self.open_model(url.toLocalFile())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        """A window made wider gives the Memory dock its share back (docks keep their width)."""
        super().resizeEvent(event)
        grew = event.oldSize().width() > 0 and event.size().width() > event.oldSize().width()
        want = min(MEMORY_WIDTH, int(self.width() * 0.32))
        if grew and self.memory.isVisible() and not self.memory.isFloating() and self.memory.width() < want:
            self.resizeDocks([self.memory], [want], Qt.Orientation.Horizontal)

    def receive_arguments(self, args: list[str]) -> None:
        """A second ``kvdeck FILE`` launch handed its arguments over: show this window, open the file."""
        log.info("a second launch handed over %s", args)
        if self.isMinimized():
            self.showNormal()
        self.raise_()
        self.activateWindow()
        files = [a for a in args if not a.startswith("-")]
        if files:
            self.open_model(files[0])

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        window_state.save(self)
        self.chat._save_reply()
        self.memory.stop()
        self.hub.shutdown()
        self.server_toggle.stop()
        self.machines.stop_sharing()
        self.bridge.shutdown()
        super().closeEvent(event)
