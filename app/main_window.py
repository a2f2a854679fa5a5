"""The KV Deck main window: sidebar, chat pane, problem banner, status bar with load progress.

Dropping a file anywhere on the window loads it. Every problem (a bad file, a crashed runtime,
a full disk) becomes one line in the banner at the top; the conversation is never touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QResizeEvent
from PySide6.QtWidgets import QLabel, QMainWindow, QProgressBar, QSplitter, QVBoxLayout, QWidget

from app import window_state
from app.appinfo import APP_NAME
from app.banner import Banner
from app.bridges.draft_picker import DraftController
from app.bridges.runtime_bridge import RuntimeBridge
from app.bridges.server_toggle import ServerToggle
from app.chat.chat_pane import ChatPane
from app.machines.dock import MachinesDock
from app.memory.cache_panel import MARGINS_SETTING, margins_from_setting, margins_setting
from app.memory.memory_dock import MemoryDock
from app.menus import WindowMenus
from app.model_loading import ModelLoading
from app.sidebar import Sidebar
from engine.core.memory_types import PlanSettings

if TYPE_CHECKING:
    from app.hub.pane import HubDock
from engine.gguf.inspect import GGUFInfo
from engine.storage.store import ChatStore

log = logging.getLogger(__name__)

MEMORY_MIN_WIDTH = 360  # the dashboard's plan table and the cache panel's forms fit (~165 px cut them off)
MEMORY_WIDTH = 420


class MainWindow(QMainWindow):
    """Wires the widgets together; the model itself is `models` (`app.model_loading`)."""

    def __init__(self, store: ChatStore, bridge: RuntimeBridge | None = None) -> None:
        super().__init__()
        self.store = store
        self.bridge = bridge or RuntimeBridge(self)
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)

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
        self.sidebar.conversationSelected.connect(self.chat.open_conversation)
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
        self.sidebar.problem.connect(self.show_problem)
        self.sidebar.conversationDeleted.connect(self._on_conversation_deleted)
        self.models = ModelLoading(self)  # opening, fitting, loading; the status bar's model state
        self.chat.largerContextRequested.connect(self.models.use_larger_context)

        self.memory = MemoryDock(self._runtime_pid, self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.memory)
        self.memory.setMinimumWidth(MEMORY_MIN_WIDTH)
        self.resizeDocks([self.memory], [420], Qt.Orientation.Horizontal)
        self.memory.applyRequested.connect(self.models.apply)
        # the fit's margins, as `kvdeck fit --margin-mib/--cpu-margin-mib`: one setting for all models
        self.memory.cache.set_margins(margins_from_setting(store.get_setting(MARGINS_SETTING)))
        self.memory.cache.marginsChanged.connect(
            lambda m: self.chat._setting(MARGINS_SETTING, margins_setting(m))
        )
        self.bridge.kvUsed.connect(self.memory.kv_used)
        self.bridge.kvSlots.connect(self.memory.kv_slots)  # one bar per parallel sequence
        self.chat.speed.connect(self.memory.speed)
        QTimer.singleShot(0, self.memory, self.memory.start)  # telemetry (NVML, /proc) after the first paint
        self._hub: HubDock | None = None  # "Get models": built when first shown (app.hub)
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
            lambda: self.models.settings,
            lambda: self.memory.devices()[0],
            self.memory.cache.margins,  # the fits-together check keeps the window's margins
            self,
        )
        self.drafting.problem.connect(self.show_problem)
        self.drafting.draftPlan.connect(self.memory.show_draft_plan)
        self.drafting.stats.connect(self.memory.dashboard.show_speculation)
        self.drafting.drafterChanged.connect(self.memory.cache.set_drafter)  # fit target + drafter
        self.chat.speed.connect(self.drafting.live_speed)

        window_state.fit_narrow_windows(self)
        self.menus = WindowMenus(self)  # File, Edit, Chat, View, Server, Help, with shortcuts
        self.get_models_action = QAction("&Get models…", self)  # the Hugging Face pane (app.hub)
        self.get_models_action.setShortcut(QKeySequence("Ctrl+Shift+M"))
        self.get_models_action.triggered.connect(self.show_hub)
        self.menus.file_menu.insertAction(self.menus.models_section, self.get_models_action)
        self.about_action = self.menus.about
        window_state.restore(self)
        if window_state.hub_was_open():  # open at the last close: built after the first paint
            QTimer.singleShot(0, self, self.show_hub)

        self.sidebar.refresh_models()
        convs = store.list_conversations()
        self.sidebar.refresh_conversations(convs[0].id if convs else None)
        self.chat.open_conversation(convs[0].id if convs else None)
        self.chat.view.set_placeholder(
            "<h2>Welcome to KV Deck</h2><p>Type a message below to chat with the loaded model, or drop a "
            "<b>.gguf</b> file anywhere on this window to load another one.</p>"
        )

    # ------------------------------------------------------------------ models (app.model_loading)
    @property
    def model_info(self) -> GGUFInfo | None:
        return self.models.info

    @property
    def settings(self) -> PlanSettings | None:
        return self.models.settings

    def start(self) -> None:
        """Load the last used model, or the demo model on the very first start."""
        self.models.start()

    def open_model(self, path: str) -> None:
        self.models.open(path)

    def choose_file(self) -> None:
        self.models.choose_file()

    def restart_runtime(self) -> None:
        self.models.restart_runtime()

    def _use_workers(self, workers: tuple[str, ...]) -> None:
        self.bridge.workers = workers
        self.memory.workers_changed()

    def _runtime_pid(self) -> int | None:
        host = self.bridge.host
        return host.pid if host is not None and host.running else None

    @property
    def hub(self) -> HubDock:
        """The "Get models" dock, built on first use: its modules (the Hub client, verdicts,
        downloads) are a tenth of a second of start-up that most starts never need."""
        if self._hub is None:
            from app.hub.pane import HubDock

            self._hub = HubDock(lambda: self.memory.devices()[0], self)
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self._hub)
            if not self.memory.isFloating():  # a tab beside Memory; not inside a floating Memory
                self.tabifyDockWidget(self.memory, self._hub)
            self._hub.hide()
            self._hub.pane.modelReady.connect(lambda _path: self.sidebar.refresh_models())
            self._hub.pane.loadRequested.connect(self.open_model)
        return self._hub

    def show_hub(self) -> None:
        """The "Get models" pane, wide enough for its verdicts, the search field focused."""
        self.hub.show()
        self.hub.raise_()
        QTimer.singleShot(0, self._widen_hub)  # once the dock is laid out (a first show)
        self.hub.pane.query.setFocus()

    def _widen_hub(self) -> None:
        wanted = max(760, self.width() // 2)
        docked = (
            self.dockWidgetArea(self.hub) != Qt.DockWidgetArea.NoDockWidgetArea and not self.hub.isFloating()
        )
        if docked and self.hub.isVisible() and self.hub.width() < wanted:
            self.resizeDocks([self.hub], [wanted], Qt.Orientation.Horizontal)

    # ------------------------------------------------------------------ conversations
    def _new_conversation(self) -> None:
        self.chat.new_conversation()
        self.sidebar.refresh_conversations(None)

    def _on_conversation_deleted(self, conv_id: int, title: str) -> None:
        self.show_problem(f"Deleted “{title}”.", "Undo", lambda: self.sidebar.restore(conv_id))

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
        window_state.save(self, hub_open=self._hub is not None and self._hub.isVisible())
        self.chat._save_reply()
        self.memory.stop()
        if self._hub is not None:
            self._hub.shutdown()
        self.server_toggle.stop()
        self.machines.stop_sharing()
        self.bridge.shutdown()
        super().closeEvent(event)
