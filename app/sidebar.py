"""Left sidebar: conversations and the model library (known models found on disk).

Scanning the disk for models runs in the background (``app.background``): a slow network drive must never freeze
the window, and the list simply fills in when the scan is done.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMenu, QPushButton, QVBoxLayout, QWidget,
)

from app.background import run_in_background
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

    def __init__(self, store: ChatStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.new_button = QPushButton("New chat", self, clicked=lambda: self.newConversation.emit())
        self.conversations = QListWidget(self)
        self.conversations.itemClicked.connect(
            lambda item: self.conversationSelected.emit(item.data(_ROLE)))
        self.conversations.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversations.customContextMenuRequested.connect(self._conversation_menu)
        self.models = QListWidget(self)
        self.models.itemActivated.connect(lambda item: self.modelChosen.emit(item.data(_ROLE)))
        self.models.itemDoubleClicked.connect(lambda item: self.modelChosen.emit(item.data(_ROLE)))
        self.models.setToolTip("Double-click a model to load it")
        open_button = QPushButton("Open GGUF…", self, clicked=lambda: self.openFileRequested.emit())
        rescan = QPushButton("Rescan", self, clicked=self.refresh_models)
        row = QHBoxLayout()
        row.addWidget(open_button, 1)
        row.addWidget(rescan)
        self.get_models_button = QPushButton("Get models…", self,
                                             clicked=lambda: self.getModelsRequested.emit())
        self.get_models_button.setToolTip("Search the Hugging Face Hub, see what fits, download")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 0, 0)
        layout.addWidget(self.new_button)
        layout.addWidget(QLabel("<b>Conversations</b>"))
        layout.addWidget(self.conversations, 3)
        layout.addWidget(QLabel("<b>Models</b>"))
        layout.addWidget(self.models, 2)
        layout.addLayout(row)
        layout.addWidget(self.get_models_button)
        self.setMinimumWidth(220)

    # ------------------------------------------------------------------ conversations
    def refresh_conversations(self, current: int | None) -> None:
        self.conversations.clear()
        for conv in self.store.list_conversations():
            item = QListWidgetItem(conv.title)
            item.setData(_ROLE, conv.id)
            item.setToolTip(conv.title)
            self.conversations.addItem(item)
            if conv.id == current:
                self.conversations.setCurrentItem(item)

    def _conversation_menu(self, pos) -> None:  # noqa: ANN001
        item = self.conversations.itemAt(pos)
        if item is None:
            return
        menu = QMenu(self)
        delete = menu.addAction("Delete conversation")
        if menu.exec(self.conversations.mapToGlobal(pos)) is delete:
            self.store.delete_conversation(item.data(_ROLE))
            self.refresh_conversations(None)
            self.newConversation.emit()

    # ------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        recent = [Path(p) for p in self.store.get_setting("recent_models", [])]
        run_in_background(scan_models, recent=recent, parent=self, name="kvdeck-model-scan",
                          on_result=self._show_models, on_error=self._scan_failed)

    def _scan_failed(self, exc: BaseException) -> None:
        """A scan problem must not take the window down: the list stays empty, the log says why."""
        log.warning("scanning for models failed", exc_info=exc)
        self._show_models([])

    def _show_models(self, entries: list[ModelEntry]) -> None:
        self.models.clear()
        labels = {"demo": "demo", "recent": "recent", "huggingface": "Hugging Face",
                  "lmstudio": "LM Studio", "models-folder": "~/models"}
        for e in entries:
            item = QListWidgetItem(f"{e.name}  ({format_bytes(e.size)})")
            item.setData(_ROLE, str(e.path))
            item.setToolTip(f"{e.path}\n{labels.get(e.source, e.source)}")
            self.models.addItem(item)
        if not entries:
            self.models.addItem(QListWidgetItem("No models found yet — drop a .gguf here"))
