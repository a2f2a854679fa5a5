"""Left sidebar: conversations and the model library (known models found on disk).

Conversations can be searched (title and text, ``ChatStore.search``), renamed in place (double-click,
F2 or the context menu), exported to Markdown or JSON, imported from JSON (OpenAI's message list,
app.chat.conversation_files) and deleted; a deletion is only hidden until the window says it is
final, so the window can offer Undo (``conversationDeleted``).

Scanning the disk for models runs in the background (``app.background``): a slow network drive must never freeze
the window, and the list simply fills in when the scan is done.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QSizePolicy,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from app.chat import conversation_files
from engine.core.errors import KvDeckError
from engine.core.units import format_bytes
from engine.storage.library import ModelEntry, scan_models
from engine.storage.store import ChatStore

log = logging.getLogger(__name__)
_ROLE = Qt.ItemDataRole.UserRole


class Sidebar(QWidget):
    conversationSelected = Signal(int)
    newConversation = Signal()
    modelChosen = Signal(str)
    openFileRequested = Signal()
    getModelsRequested = Signal()  # the Hub's "Get models" pane (app.hub)
    conversationDeleted = Signal(int, str)  # id, title: the window offers Undo
    problem = Signal(str)

    def __init__(self, store: ChatStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self._current: int | None = None
        self.new_button = QPushButton("New chat", self, clicked=lambda: self.newConversation.emit())
        self.import_button = QPushButton("Import…", self, clicked=lambda: self.import_conversation())
        self.import_button.setToolTip("Import a conversation from a JSON file (OpenAI message list)")
        self.search_edit = QLineEdit(self, placeholderText="Search conversations", clearButtonEnabled=True)
        self.search_edit.textChanged.connect(lambda _t: self.refresh_conversations(self._current))
        self.conversations = QListWidget(self)
        self.conversations.itemClicked.connect(lambda item: self.conversationSelected.emit(item.data(_ROLE)))
        self.conversations.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        self.conversations.itemChanged.connect(self._renamed)
        self.conversations.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversations.customContextMenuRequested.connect(self._conversation_menu)
        self.models = QListWidget(self)
        self.models.itemActivated.connect(lambda item: self.modelChosen.emit(item.data(_ROLE)))
        self.models.itemDoubleClicked.connect(lambda item: self.modelChosen.emit(item.data(_ROLE)))
        self.models.setToolTip("Double-click a model to load it")
        self.open_button = QPushButton("Open GGUF…", self, clicked=lambda: self.openFileRequested.emit())
        # an icon beside "Open GGUF…", whose whole name then fits the narrowest sidebar (1000×700)
        rescan = QToolButton(self)
        rescan.setText("Rescan")
        rescan.clicked.connect(self.refresh_models)
        rescan.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_BrowserReload))
        rescan.setToolTip("Rescan the model folders")
        rescan.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)
        row = QHBoxLayout()
        row.addWidget(self.open_button, 1)
        row.addWidget(rescan)
        self.get_models_button = QPushButton(
            "Get models…", self, clicked=lambda: self.getModelsRequested.emit()
        )
        self.get_models_button.setToolTip("Search the Hugging Face Hub, see what fits, download")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.new_button, 1)
        top.addWidget(self.import_button)
        layout.addLayout(top)
        layout.addWidget(QLabel("<b>Conversations</b>"))
        layout.addWidget(self.search_edit)
        layout.addWidget(self.conversations, 3)
        layout.addWidget(QLabel("<b>Models</b>"))
        layout.addWidget(self.models, 2)
        layout.addLayout(row)
        layout.addWidget(self.get_models_button)
        self.setMinimumWidth(220)

    # ------------------------------------------------------------------ conversations
    def refresh_conversations(self, current: int | None) -> None:
        """List the conversations (those matching the search, with the matching text as tooltip)."""
        self._current = current
        query = self.search_edit.text().strip()
        self.conversations.blockSignals(True)
        self.conversations.clear()
        try:
            if query:
                rows = [(h.conversation_id, h.title, h.snippet, "") for h in self.store.search(query)]
            else:
                rows = [(c.id, c.title, "", c.model_path or "") for c in self.store.list_conversations()]
        except KvDeckError as exc:
            rows = []
            self.problem.emit(str(exc))
        for conv_id, title, snippet, model in rows:
            item = QListWidgetItem(title)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setData(_ROLE, conv_id)
            model_name = Path(model).name if model else ""
            item.setToolTip(
                "\n".join(x for x in (title, snippet, model_name and f"Model: {model_name}") if x)
            )
            self.conversations.addItem(item)
            if conv_id == current:
                self.conversations.setCurrentItem(item)
        self.conversations.blockSignals(False)

    def focus_search(self) -> None:
        """Put the cursor in the search field (Ctrl+F / Edit ▸ Find, wired by the window)."""
        self.search_edit.setFocus()
        self.search_edit.selectAll()

    def rename_current(self) -> None:
        """Edit the selected conversation's title in place (F2 does the same)."""
        item = self.conversations.currentItem()
        if item is not None:
            self.conversations.editItem(item)

    def _renamed(self, item: QListWidgetItem) -> None:
        title = " ".join(item.text().split())
        conv_id = item.data(_ROLE)
        try:
            if title:
                self.store.rename_conversation(conv_id, title)
            conv = None if title else self.store.get_conversation(conv_id)
            title = title or (conv.title if conv else item.text())
        except KvDeckError as exc:
            self.problem.emit(str(exc))
        # the item only, not the list: a rebuild would move the selection under the user
        self.conversations.blockSignals(True)
        item.setText(title)
        item.setToolTip(title)
        self.conversations.blockSignals(False)

    def delete_current(self) -> None:
        item = self.conversations.currentItem()
        if item is not None:
            self._delete(item.data(_ROLE), item.text())

    def _delete(self, conv_id: int, title: str) -> None:
        try:
            self.store.delete_conversation(conv_id)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return
        self.refresh_conversations(None)
        self.newConversation.emit()
        self.conversationDeleted.emit(conv_id, title)

    def restore(self, conv_id: int) -> None:
        """Undo a deletion and show the conversation again."""
        try:
            if self.store.restore_conversation(conv_id):
                self.refresh_conversations(conv_id)
                self.conversationSelected.emit(conv_id)
        except KvDeckError as exc:
            self.problem.emit(str(exc))

    def _conversation_menu(self, pos) -> None:  # noqa: ANN001
        item = self.conversations.itemAt(pos)
        if item is None:
            return
        conv_id, title = item.data(_ROLE), item.text()
        menu = QMenu(self)
        menu.addAction("Rename", lambda: self.conversations.editItem(item))
        menu.addAction("Export as Markdown…", lambda: self.export_conversation(conv_id, "md"))
        menu.addAction("Export as JSON…", lambda: self.export_conversation(conv_id, "json"))
        menu.addSeparator()
        menu.addAction("Delete conversation", lambda: self._delete(conv_id, title))
        menu.exec(self.conversations.mapToGlobal(pos))

    def export_conversation(self, conv_id: int | None = None, fmt: str = "json") -> None:
        """Save a conversation (default: the selected one) as Markdown ("md") or JSON."""
        if conv_id is None:
            item = self.conversations.currentItem()
            conv_id = item.data(_ROLE) if item is not None else self._current
        conv = self.store.get_conversation(conv_id) if conv_id else None
        if conv is None:
            return
        kind = "Markdown (*.md)" if fmt == "md" else "JSON (*.json)"
        name = conversation_files.file_name(conv.title, fmt)
        start = str(Path(self.store.get_setting("last_export_dir", str(Path.home()))) / name)
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", start, kind)
        if path:
            try:
                conversation_files.export(self.store, conv.id, path, fmt)
                self.store.set_setting("last_export_dir", str(Path(path).parent))
            except (KvDeckError, OSError) as exc:
                self.problem.emit(f"could not export {Path(path).name}: {exc}")

    def import_conversation(self, path: str = "") -> int | None:
        """Import a JSON conversation (asks for the file when none is given); returns its id."""
        if not path:
            start = self.store.get_setting("last_export_dir", str(Path.home()))
            path, _ = QFileDialog.getOpenFileName(
                self, "Import a conversation", start, "JSON (*.json);;All files (*)"
            )
        if not path:
            return None
        try:
            conv_id = conversation_files.import_json(self.store, path)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return None
        self.search_edit.clear()
        self.refresh_conversations(conv_id)
        self.conversationSelected.emit(conv_id)
        return conv_id

    # ------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        recent = [Path(p) for p in self.store.get_setting("recent_models", [])]
        run_in_background(
            scan_models,
            recent=recent,
            parent=self,
            name="kvdeck-model-scan",
            on_result=self._show_models,
            on_error=self._scan_failed,
        )

    def _scan_failed(self, exc: BaseException) -> None:
        """A scan problem must not take the window down: the list stays empty, the log says why."""
        log.warning("scanning for models failed", exc_info=exc)
        self._show_models([])

    def _show_models(self, entries: list[ModelEntry]) -> None:
        self.models.clear()
        labels = {
            "demo": "demo",
            "recent": "recent",
            "huggingface": "Hugging Face",
            "lmstudio": "LM Studio",
            "models-folder": "~/models",
        }
        for e in entries:
            item = QListWidgetItem(f"{e.name}  ({format_bytes(e.size)})")
            item.setData(_ROLE, str(e.path))
            item.setToolTip(f"{e.path}\n{labels.get(e.source, e.source)}")
            self.models.addItem(item)
        if not entries:
            self.models.addItem(QListWidgetItem("No models found yet — drop a .gguf here"))
