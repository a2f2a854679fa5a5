"""The streaming half of the chat pane: text arriving, saved as it comes, and how a reply ends.

A mixin of :class:`app.chat.chat_pane.ChatPane` (split out to keep each module readable); it uses
the pane's store, bridge, view and timers. Every reply ends with a stored reason
(``Message.end_reason``): the model finished, stopped by you, maximum length, context full, the
runtime stopped. A reply that never wrote a word is deleted, so no empty bubble stays behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QTimer

from app.bridges.runtime_bridge import RuntimeBridge
from app.chat.chat_view import ChatView, ShownMessage
from app.chat.context_notice import ContextNotice
from engine import protocol as P
from engine.chat.conversation import end_reason
from engine.core.errors import KvDeckError
from engine.storage.store import ChatStore


class ReplyStream:
    """Needs these from the pane (declared for readers and type checkers)."""

    store: ChatStore
    bridge: RuntimeBridge
    view: ChatView
    notice: ContextNotice
    prefill: dict[int, tuple[int, int]]
    _reply_id: int | None
    _reply_text: str
    _reply_tokens: int
    _reply_t0: float
    _render_timer: QTimer
    _save_timer: QTimer
    speed: Any  # Signal(float)
    problem: Any  # Signal(str)
    _write: Callable[..., Any]
    _write_quietly: Callable[..., None]
    _reload: Callable[[], None]

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
            self.view.update_last(
                ShownMessage(self._reply_id, "assistant", self._reply_text, False, streaming=True)
            )

    def _save_reply(self) -> None:
        if self._reply_id is not None:
            self._write_quietly(self.store.update_message, self._reply_id, self._reply_text, False)

    def _on_finished(self, done: P.Done) -> None:
        if self._reply_id is None:
            return
        info = self.bridge.loaded_info
        self.prefill[self._reply_id] = (done.n_prompt, done.n_reused)
        reason = end_reason(done, info.n_ctx_seq if info else 0)
        # the runtime ended the reply on purpose (even when stopped or out of room): complete,
        # with its reason shown; only a reply the runtime never finished is "(incomplete)"
        self._end_reply(done.text, True, len(done.tokens), done.tokens_per_s, reason)
        self.speed.emit(done.tokens_per_s)
        if reason == "context":
            self.notice.ask("The reply reached the end of the context.", can_drop=False)

    def _on_failed(self, message: str) -> None:
        if self._reply_id is not None:
            crashed = self.bridge.loaded_info is None  # the runtime exited under the reply
            reason = "crash" if crashed else "stop" if not message else None
            self._end_reply(self._reply_text, False, self._reply_tokens or None, None, reason)
        if message:
            self.problem.emit(message)

    def _end_reply(
        self, text: str, complete: bool, n_tokens: int | None, tps: float | None, reason: str | None
    ) -> None:
        self._save_timer.stop()
        self._render_timer.stop()
        reply_id, self._reply_id = self._reply_id, None
        try:
            if text:
                self._write(
                    self.store.update_message,
                    reply_id,
                    text,
                    complete=complete,
                    n_tokens=n_tokens,
                    tokens_per_s=tps,
                    end_reason=reason,
                )
            else:  # nothing was written: no empty bubble
                self._write(self.store.delete_message, reply_id)
        except KvDeckError as exc:
            self.problem.emit(str(exc))
        self._reload()
