"""The chat pane: transcript, prompt box, settings, stop / regenerate / edit, the context notice.

Every message is written to the store the moment it exists; a streaming reply is saved about
twice a second marked incomplete, so a crash or kill keeps what was already shown. Each reply
ends with a stored reason (``Message.end_reason``), and a reply that never wrote a word is
deleted rather than left as an empty bubble.

Before each reply the conversation is fitted to the context on a background thread, and the cut
is remembered per conversation so the runtime can reuse its cached prefix (``app.chat.context_fit``).
The streaming half (text arriving, saved as it comes, how a reply ends) is ``app.chat.reply_stream``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.bridges.draft_picker import DraftPicker
from app.bridges.runtime_bridge import RuntimeBridge
from app.chat.chat_settings import effective_settings, save_settings
from app.chat.chat_view import ChatView, ShownMessage
from app.chat.context_fit import ContextFit
from app.chat.context_notice import ContextNotice
from app.chat.markdown_view import code_blocks
from app.chat.prompt_edit import PromptEdit
from app.chat.reply_stream import ReplyStream
from app.chat.settings_panel import ChatSettings
from app.elided import ElidedLabel
from engine import protocol as P
from engine.chat.conversation import conversation_prompt
from engine.chat.overflow import Fitted, OverflowPolicy
from engine.core.errors import ContextFull, KvDeckError
from engine.gguf.inspect import recommended_sampling_of
from engine.storage.fallback import StoreDegraded
from engine.storage.identity import title_from_text
from engine.storage.store import ChatStore

T = TypeVar("T")
SAVE_INTERVAL_MS = 500
RENDER_INTERVAL_MS = 50
CHAT_HINT = "Ask anything — Enter sends, Shift+Enter for a new line"
BASE_HINT = "Continue the text (a base model completes what you write) — Enter sends"


class ChatPane(ReplyStream, QWidget):
    conversationsChanged = Signal()
    problem = Signal(str)  # one-line message for the window's banner
    storeProblem = Signal(str)  # the chat history cannot be written: stays on the banner
    speed = Signal(float)  # live tokens/s
    copied = Signal(str)  # "Copied": the window shows it briefly in the status bar
    largerContextRequested = Signal()  # the window fits the largest context and reloads

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
        self._retry_after_load: int | None = None  # conversation to answer once reloaded
        #: (prompt tokens, tokens reused from the KV cache) per reply of this session, by message id
        self.prefill: dict[int, tuple[int, int]] = {}
        self._build()
        self.fit = ContextFit(store, self, self._write_quietly)
        self._update_buttons()
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_reply)
        self._save_timer = QTimer(self, interval=SAVE_INTERVAL_MS)
        self._save_timer.timeout.connect(self._save_reply)
        bridge.delta.connect(self._on_delta)
        bridge.finished.connect(self._on_finished)
        bridge.generationFailed.connect(self._on_failed)
        bridge.busyChanged.connect(lambda _busy: self._update_buttons())
        bridge.loaded.connect(self._on_loaded)
        bridge.loadFailed.connect(lambda _m: setattr(self, "_retry_after_load", None))

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.view = ChatView(self)
        self.view.action.connect(self._on_action)
        self.view.codeCopy.connect(self._copy_code)
        self.settings = ChatSettings(self)
        self.settings.changed.connect(self._save_settings)
        self.settings.system_edit.textChanged.connect(self._system_edited)
        self.system_edit = self.settings.system_edit
        self.preset_box = self.settings.preset_box
        self.max_tokens = self.settings.max_tokens
        self._system_timer = QTimer(self, singleShot=True, interval=400)
        self._system_timer.timeout.connect(self._save_system_prompt)
        self.model_label = ElidedLabel(parent=self)  # gives way to the draft picker when narrow
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top = QHBoxLayout()
        top.addWidget(self.model_label, 1)
        self.draft_picker = DraftPicker(self)  # speculative decoding (MainWindow wires it)
        top.addWidget(self.draft_picker)
        self.notice = ContextNotice(self)
        self.notice.largerContext.connect(self.use_larger_context)
        self.notice.newChat.connect(self._new_chat_with_last_message)
        self.notice.dropOlder.connect(self._let_older_drop)

        self.input = PromptEdit(self, placeholderText=CHAT_HINT)
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
        layout.addWidget(self.settings)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.notice)
        layout.addWidget(self.edit_label)
        layout.addLayout(bottom)
        self._show_settings()

    def _update_buttons(self) -> None:
        busy = self.bridge.generating or self.fit.busy
        ready = self.bridge.loaded_info is not None
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        has_reply = any(m.role == "assistant" for m in self.view.messages())
        self.regen_button.setEnabled(ready and not busy and has_reply)

    def _on_loaded(self, info: P.Loaded) -> None:
        self.input.setPlaceholderText(CHAT_HINT if info.chat_template else BASE_HINT)
        if self.conversation_id is None:
            self._show_settings()  # a new chat starts from this model's defaults
        self._update_buttons()
        retry, self._retry_after_load = self._retry_after_load, None
        if retry is not None and retry == self.conversation_id:
            self._start_reply()  # "Use a larger context": answer the waiting message

    # ------------------------------------------------------------------ conversations
    def open_conversation(self, conv_id: int | None) -> None:
        if self.bridge.generating or self.fit.busy:
            self.stop()
        self._finish_editing()
        self.notice.hide()
        self._retry_after_load = None
        self.conversation_id = conv_id
        self._show_settings()
        self._reload()

    def new_conversation(self) -> None:
        self.open_conversation(None)
        self.input.setFocus()

    def _show_settings(self) -> None:
        conv = self.store.get_conversation(self.conversation_id) if self.conversation_id else None
        info = self.bridge.loaded_info
        try:
            values = effective_settings(self.store, self.conversation_id, info.path if info else None)
        except KvDeckError:
            values = {}
        self.settings.set_values(values, recommended_sampling_of(info.path if info else None))
        system = conv.system_prompt if conv else self.store.get_setting("system_prompt", "")
        self.system_edit.blockSignals(True)
        self.system_edit.setPlainText(system)
        self.system_edit.blockSignals(False)
        model = (conv.model_path if conv else None) or (info.path if info else "")
        self.model_label.setText(f"Model: {model.replace(chr(92), '/').rsplit('/', 1)[-1]}" if model else "")
        self.model_label.setToolTip(model)
        outside = conv.settings.get("dropped_ids", []) if conv else []
        self.view.set_outside(set(outside), str(conv.settings.get("note", "")) if conv else "")

    def _reload(self) -> None:
        msgs = self.store.messages(self.conversation_id) if self.conversation_id else []
        shown = []
        for m in msgs:
            if m.role == "assistant" and not m.content and m.id != self._reply_id:
                self._write_quietly(self.store.delete_message, m.id)  # an empty reply of the past
                continue
            shown.append(ShownMessage.of(m, self.prefill.get(m.id), streaming=m.id == self._reply_id))
        self.view.set_messages(shown)
        self._update_buttons()

    def _system_edited(self) -> None:
        self._system_timer.start()  # saved once typing pauses

    def _save_system_prompt(self) -> None:
        text = self.system_edit.toPlainText()
        if self.conversation_id:
            self._write_quietly(self.store.set_system_prompt, self.conversation_id, text)
        self._write_quietly(self.store.set_setting, "system_prompt", text)

    def _save_settings(self) -> None:
        info = self.bridge.loaded_info
        self._write_quietly(
            save_settings,
            self.store,
            self.conversation_id,
            info.path if info else None,
            self.settings.values(),
        )

    # ------------------------------------------------------------------ store writes
    def _write(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A store write. When the disk fails (full, read-only) the store moves into memory and
        says so once (`StoreDegraded`): report it and redo the write there, so chat goes on."""
        try:
            return fn(*args, **kwargs)
        except StoreDegraded as exc:
            self.storeProblem.emit(str(exc))
            return fn(*args, **kwargs)

    def _write_quietly(self, fn: Callable[..., object], *args: object) -> None:
        """A write whose failure is reported on the banner and otherwise ignored."""
        try:
            self._write(fn, *args)
        except KvDeckError as exc:
            self.problem.emit(str(exc))

    def _setting(self, key: str, value: object) -> None:
        self._write_quietly(self.store.set_setting, key, value)

    # ------------------------------------------------------------------ sending
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.bridge.generating or self.fit.busy:
            return
        if self.bridge.loaded_info is None:
            self.problem.emit(
                "No model is loaded yet: drop a .gguf file on the window or pick one on the left."
            )
            return  # the text stays in the box
        try:
            if self.conversation_id is None:
                info = self.bridge.loaded_info
                conv = self._write(
                    self.store.create_conversation,
                    title_from_text(text),
                    model_path=info.path,
                    system_prompt=self.system_edit.toPlainText(),
                )
                self.conversation_id = conv.id
                self._save_settings()
                self.conversationsChanged.emit()
            if self._editing_id is not None:
                self._write(self.store.truncate_after, self.conversation_id, self._editing_id, inclusive=True)
            self._write(self.store.add_message, self.conversation_id, "user", text)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            return
        self.input.clear()
        self._finish_editing()
        self.notice.hide()
        self._reload()
        self._start_reply()

    def _start_reply(self) -> None:
        """Fit the conversation to the context in the background, then generate."""
        info, host = self.bridge.loaded_info, self.bridge.host
        if self.conversation_id is None or info is None or host is None:
            return
        conv_id, system = self.conversation_id, self.system_edit.toPlainText()
        self.fit.start(
            conv_id,
            info,
            host.tokenize,
            system,
            max_tokens=self.max_tokens.value(),
            policy=self.settings.policy,
            on_fitted=lambda ids, fitted: self._on_fitted(conv_id, ids, system, fitted),
            on_failed=self._on_fit_failed,
        )
        self._update_buttons()

    def _on_fit_failed(self, exc: BaseException) -> None:
        self._update_buttons()
        if isinstance(exc, ContextFull):
            can_drop = self.settings.policy == OverflowPolicy.STOP.value
            self.notice.ask(f"This conversation does not fit the context: {exc}.", can_drop=can_drop)
        else:
            self.problem.emit(str(exc))

    def _on_fitted(self, conv_id: int, ids: list[int], system: str, fitted: Fitted) -> None:
        info = self.bridge.loaded_info
        if conv_id != self.conversation_id or info is None:
            self._update_buttons()
            return  # another conversation opened, or the model went away meanwhile
        dropped = self.fit.remember(conv_id, ids, fitted)
        self.view.set_outside(set(dropped), fitted.note)
        try:
            prompt = conversation_prompt(info, system, list(fitted.turns))
            reply = self._write(self.store.add_message, conv_id, "assistant", "", complete=False)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
            self._update_buttons()
            return
        self._reply_id, self._reply_text, self._reply_tokens = reply.id, "", 0
        self._reply_t0 = time.perf_counter()
        self.view.update_last(ShownMessage(reply.id, "assistant", "", False, streaming=True))
        if self.bridge.generate(prompt.text, self.settings.sampling(), self.max_tokens.value()):
            self._save_timer.start()
        self._update_buttons()

    def stop(self) -> None:
        if self.fit.busy:
            self.fit.cancel()
            self._update_buttons()
        self.bridge.cancel()

    def regenerate_last(self) -> None:
        last = next((m for m in reversed(self.view.messages()) if m.role == "assistant"), None)
        if last is not None:
            self._regenerate(last.id)

    def _regenerate(self, msg_id: int) -> None:
        if (
            self.bridge.generating
            or self.fit.busy
            or self.conversation_id is None
            or self.bridge.loaded_info is None
        ):
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

    # ------------------------------------------------------------------ the context is full
    def use_larger_context(self) -> None:
        """Reload with the largest context that fits (the window computes it), then answer."""
        self._retry_after_load = self.conversation_id if self._waiting_for_reply() else None
        self.largerContextRequested.emit()

    def _waiting_for_reply(self) -> bool:
        msgs = self.view.messages()
        return bool(msgs) and msgs[-1].role == "user"

    def _new_chat_with_last_message(self) -> None:
        msgs = self.view.messages()
        text = msgs[-1].content if msgs and msgs[-1].role == "user" else ""
        self.new_conversation()
        self.conversationsChanged.emit()
        self.input.setPlainText(text)

    def _let_older_drop(self) -> None:
        self.settings.set_policy(OverflowPolicy.ROLLING.value)  # saved through `changed`
        if self._waiting_for_reply():
            self._start_reply()

    # ------------------------------------------------------------------ copying
    def _on_action(self, name: str, msg_id: int) -> None:
        shown = next((m for m in self.view.messages() if m.id == msg_id), None)
        if shown is None:
            return
        if name == "copy":
            self._copy(shown.content)
        elif name == "edit" and not self.bridge.generating:
            self._editing_id = msg_id
            self.input.setPlainText(shown.content)
            self.input.setFocus()
            self.edit_label.setText("Editing a message: sending replaces it and everything after it.")
            self.edit_label.show()
        elif name == "regenerate":
            self._regenerate(msg_id)

    def _copy_code(self, msg_id: int, block: int) -> None:
        shown = next((m for m in self.view.messages() if m.id == msg_id), None)
        blocks = code_blocks(shown.content) if shown else []
        if 0 <= block < len(blocks):
            self._copy(blocks[block])

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self.copied.emit("Copied")

    def copy_selection(self) -> None:
        """Copy the transcript's selected text (Edit ▸ Copy); says "Copied" when there was some."""
        if self.view.textCursor().hasSelection():
            self.view.copy()
            self.copied.emit("Copied")
