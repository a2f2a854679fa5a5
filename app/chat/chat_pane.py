"""The chat pane: transcript, prompt box, system prompt, sampling preset, stop / regenerate / edit.

Every message is written to the store the moment it exists; a streaming reply is saved about
twice a second marked incomplete, so a crash or kill keeps what was already shown.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

from PySide6.QtCore import QTimer, Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout,
    QWidget,
)

from app.chat.chat_view import ChatView, ShownMessage
from app.bridges.draft_picker import DraftPicker
from app.bridges.runtime_bridge import RuntimeBridge
from engine import protocol as P
from engine.chat.conversation import conversation_prompt
from engine.chat.template import ChatMessage
from engine.core.errors import KvDeckError
from engine.core.sampling import DEFAULT_PRESET, PRESETS
from engine.storage.identity import title_from_text
from engine.storage.records import Message
from engine.storage.store import ChatStore
from engine.storage.fallback import StoreDegraded

T = TypeVar("T")
SAVE_INTERVAL_MS = 500
RENDER_INTERVAL_MS = 50


class PromptEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter adds a line (or, with ``ctrl_enter_sends``, Ctrl+Enter sends and
    Enter adds a line: Chat menu); dropped files go to the window, not into the text."""

    submitted = Signal()
    ctrl_enter_sends = False

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        mods = event.modifiers()
        wanted = Qt.KeyboardModifier.ControlModifier if self.ctrl_enter_sends else Qt.KeyboardModifier.NoModifier
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                mods & Qt.KeyboardModifier.ShiftModifier) and (
                mods & Qt.KeyboardModifier.ControlModifier) == wanted:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.ignore()  # let the main window take model files
            return
        super().dragEnterEvent(event)


def _meta(m: Message) -> str:
    if m.role != "assistant" or not m.n_tokens:
        return ""
    speed = f" · {m.tokens_per_s:.1f} tokens/s" if m.tokens_per_s else ""
    return f"{m.n_tokens} tokens{speed}"


class ChatPane(QWidget):
    conversationsChanged = Signal()
    problem = Signal(str)  # one-line message for the window's banner
    storeProblem = Signal(str)  # the chat history cannot be written: stays on the banner
    speed = Signal(float)  # live tokens/s

    def __init__(self, store: ChatStore, bridge: RuntimeBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.bridge = bridge
        self.conversation_id: int | None = None
        self._editing_id: int | None = None
        self._reply_id: int | None = None
        self._reply_text = ""
        self._reply_tokens = 0
        self._reply_t0 = 0.0
        self._build()
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_reply)
        self._save_timer = QTimer(self, interval=SAVE_INTERVAL_MS)
        self._save_timer.timeout.connect(self._save_reply)
        bridge.delta.connect(self._on_delta)
        bridge.finished.connect(self._on_finished)
        bridge.generationFailed.connect(self._on_failed)
        bridge.busyChanged.connect(lambda _busy: self._update_buttons())
        bridge.loaded.connect(lambda _info: self._update_buttons())

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.view = ChatView(self)
        self.view.action.connect(self._on_action)
        self.system_edit = QLineEdit(self, placeholderText="System prompt (optional)")
        self.system_edit.editingFinished.connect(self._save_system_prompt)
        self.preset_box = QComboBox(self)
        self.preset_box.addItems(list(PRESETS))
        preset = self.store.get_setting("preset", DEFAULT_PRESET)
        self.preset_box.setCurrentText(preset if preset in PRESETS else DEFAULT_PRESET)
        self.preset_box.currentTextChanged.connect(lambda t: self._setting("preset", t))
        self.max_tokens = QSpinBox(self, minimum=1, maximum=32768, singleStep=64)
        self.max_tokens.setValue(int(self.store.get_setting("max_tokens", 512)))
        self.max_tokens.valueChanged.connect(lambda v: self._setting("max_tokens", v))
        self.max_tokens.setToolTip("Longest reply, in tokens")
        top = QHBoxLayout()  # the system prompt gets a row of its own: beside the controls it
        top.addWidget(self.system_edit, 1)  # was a few characters wide in a 1000 px window
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Sampling:"))
        controls.addWidget(self.preset_box)
        controls.addWidget(QLabel("Max tokens:"))
        controls.addWidget(self.max_tokens)
        self.draft_picker = DraftPicker(self)  # speculative decoding (MainWindow wires it)
        controls.addWidget(self.draft_picker)
        controls.addStretch(1)

        self.input = PromptEdit(self, placeholderText="Ask anything — Enter sends, Shift+Enter for a new line")
        self.input.setFixedHeight(84)
        self.input.submitted.connect(self.send)
        self.edit_label = QLabel(self)
        self.edit_label.hide()
        self.send_button = QPushButton("Send", self, clicked=self.send)
        self.stop_button = QPushButton("Stop", self, clicked=self.stop)
        self.regen_button = QPushButton("Regenerate", self, clicked=self.regenerate_last)
        buttons = QVBoxLayout()
        for b in (self.send_button, self.stop_button, self.regen_button):
            buttons.addWidget(b)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addLayout(buttons)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(controls)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.edit_label)
        layout.addLayout(bottom)
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.bridge.generating
        ready = self.bridge.loaded_info is not None
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        has_reply = any(m.role == "assistant" for m in self.view.messages())
        self.regen_button.setEnabled(ready and not busy and has_reply)

    # ------------------------------------------------------------------ conversations
    def open_conversation(self, conv_id: int | None) -> None:
        if self.bridge.generating:
            self.stop()
        self._finish_editing()
        self.conversation_id = conv_id
        conv = self.store.get_conversation(conv_id) if conv_id else None
        self.system_edit.setText(conv.system_prompt if conv else self.store.get_setting("system_prompt", ""))
        self._reload()

    def new_conversation(self) -> None:
        self.open_conversation(None)
        self.input.setFocus()

    def _reload(self) -> None:
        msgs = self.store.messages(self.conversation_id) if self.conversation_id else []
        self.view.set_messages([ShownMessage(m.id, m.role, m.content, m.complete, _meta(m)) for m in msgs])
        self._update_buttons()

    def _save_system_prompt(self) -> None:
        text = self.system_edit.text()
        try:
            if self.conversation_id:
                self._write(self.store.set_system_prompt, self.conversation_id, text)
            self._write(self.store.set_setting, "system_prompt", text)
        except KvDeckError as exc:
            self.problem.emit(str(exc))

    # ------------------------------------------------------------------ store writes
    def _write(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A store write. When the disk fails (full, read-only) the store moves into memory and
        says so once (`StoreDegraded`): report it and redo the write there, so chat goes on."""
        try:
            return fn(*args, **kwargs)
        except StoreDegraded as exc:
            self.storeProblem.emit(str(exc))
            return fn(*args, **kwargs)

    def _setting(self, key: str, value: object) -> None:
        try:
            self._write(self.store.set_setting, key, value)
        except KvDeckError as exc:
            self.problem.emit(str(exc))

    # ------------------------------------------------------------------ sending
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.bridge.generating:
            return
        if self.bridge.loaded_info is None:
            self.problem.emit("No model is loaded yet: drop a .gguf file on the window or pick one on the left.")
            return  # the text stays in the box
        try:
            if self.conversation_id is None:
                info = self.bridge.loaded_info
                conv = self._write(self.store.create_conversation, title_from_text(text),
                                   model_path=info.path, system_prompt=self.system_edit.text())
                self.conversation_id = conv.id
                self.conversationsChanged.emit()
            if self._editing_id is not None:
                self._write(self.store.truncate_after, self.conversation_id, self._editing_id,
                            inclusive=True)
            self._write(self.store.add_message, self.conversation_id, "user", text)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return
        self.input.clear()
        self._finish_editing()
        self._reload()
        self._start_reply()

    def _start_reply(self) -> None:
        assert self.conversation_id is not None
        info = self.bridge.loaded_info
        if info is None:
            return
        history = [m for m in self.store.messages(self.conversation_id) if m.content or m.role == "user"]
        turns = [ChatMessage(m.role, m.content) for m in history if m.role in ("user", "assistant")]
        try:
            prompt = conversation_prompt(info, self.system_edit.text(), turns)
            reply = self._write(self.store.add_message, self.conversation_id, "assistant", "",
                                complete=False)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return
        self._reply_id, self._reply_text, self._reply_tokens = reply.id, "", 0
        self._reply_t0 = time.perf_counter()
        self.view.update_last(ShownMessage(reply.id, "assistant", "", False))
        sampling = PRESETS.get(self.preset_box.currentText(), PRESETS[DEFAULT_PRESET])
        if self.bridge.generate(prompt.text, sampling, self.max_tokens.value()):
            self._save_timer.start()
        self._update_buttons()

    def stop(self) -> None:
        self.bridge.cancel()

    def regenerate_last(self) -> None:
        last = next((m for m in reversed(self.view.messages()) if m.role == "assistant"), None)
        if last is not None:
            self._regenerate(last.id)

    def _regenerate(self, msg_id: int) -> None:
        if self.bridge.generating or self.conversation_id is None or self.bridge.loaded_info is None:
            return
        try:
            self._write(self.store.truncate_after, self.conversation_id, msg_id, inclusive=True)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return
        self._reload()
        self._start_reply()

    def _finish_editing(self) -> None:
        self._editing_id = None
        self.edit_label.hide()

    def _on_action(self, name: str, msg_id: int) -> None:
        shown = next((m for m in self.view.messages() if m.id == msg_id), None)
        if shown is None:
            return
        if name == "copy":
            QGuiApplication.clipboard().setText(shown.content)
        elif name == "edit" and not self.bridge.generating:
            self._editing_id = msg_id
            self.input.setPlainText(shown.content)
            self.input.setFocus()
            self.edit_label.setText("Editing a message: sending replaces it and everything after it.")
            self.edit_label.show()
        elif name == "regenerate":
            self._regenerate(msg_id)

    # ------------------------------------------------------------------ streaming
    def _on_delta(self, text: str, n_tokens: int) -> None:
        if self._reply_id is None:
            return
        self._reply_text += text
        self._reply_tokens += n_tokens
        elapsed = time.perf_counter() - self._reply_t0
        if elapsed > 0:
            self.speed.emit(self._reply_tokens / elapsed)
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_reply(self) -> None:
        if self._reply_id is not None:
            self.view.update_last(ShownMessage(self._reply_id, "assistant", self._reply_text, False))

    def _save_reply(self) -> None:
        if self._reply_id is not None:
            try:
                self._write(self.store.update_message, self._reply_id, self._reply_text,
                            complete=False)
            except KvDeckError as exc:
                self.problem.emit(str(exc))

    def _on_finished(self, done: P.Done) -> None:
        if self._reply_id is None:
            return
        self._end_reply(done.text, complete=True, n_tokens=len(done.tokens), tps=done.tokens_per_s)
        self.speed.emit(done.tokens_per_s)

    def _on_failed(self, message: str) -> None:
        if self._reply_id is not None:
            self._end_reply(self._reply_text, complete=False, n_tokens=self._reply_tokens or None, tps=None)
        if message:
            self.problem.emit(message)

    def _end_reply(self, text: str, complete: bool, n_tokens: int | None, tps: float | None) -> None:
        self._save_timer.stop()
        self._render_timer.stop()
        reply_id, self._reply_id = self._reply_id, None
        try:
            self._write(self.store.update_message, reply_id, text, complete=complete,
                        n_tokens=n_tokens, tokens_per_s=tps)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
        self._reload()
