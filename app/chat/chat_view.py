"""The conversation transcript: one read-only rich-text view with per-message actions.

Finished messages are rendered once and cached; while a reply streams only that message is
rendered again. Each reply says how it ended (stopped by you, maximum length, context full,
runtime stopped); "(incomplete)" is kept for a reply that really is cut short with no known
reason, never for one still streaming. Messages outside the model's context stay in the
transcript, dimmed, after one line saying how many there are. Code blocks have a copy link. Actions (copy, edit, regenerate) are links with a private ``kvdeck:`` scheme, so
the whole transcript stays one selectable, searchable document. Nothing is ever fetched: the
view refuses every resource, and web links open in the user's browser only when clicked.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QTextBrowser, QWidget

from app.chat.markdown_view import escape_plain, render_markdown
from app.theme import chat_colors, is_dark
from engine.storage.records import END_REASONS, Message

_PRE = re.compile(r"<pre\b")


@dataclass(frozen=True)
class ShownMessage:
    id: int
    role: str
    content: str
    complete: bool
    meta: str = ""
    streaming: bool = False
    end_reason: str | None = None

    @classmethod
    def of(cls, m: Message, prefill: tuple[int, int] | None, streaming: bool = False) -> ShownMessage:
        """A stored message as shown; ``prefill``: (prompt tokens, tokens from the KV cache)
        of the reply, known for the replies of this session."""
        meta = ""
        if m.role == "assistant" and m.n_tokens:
            speed = f" · {m.tokens_per_s:.1f} tokens/s" if m.tokens_per_s else ""
            cached = f" · prompt {prefill[0]} tokens, {prefill[1]} from cache" if prefill else ""
            meta = f"{m.n_tokens} tokens{speed}{cached}"
        return cls(m.id, m.role, m.content, m.complete, meta, streaming, m.end_reason)


__all__ = ["ChatView", "ShownMessage", "is_dark"]


class ChatView(QTextBrowser):
    """Emits ``action(name, message_id)`` for the copy / edit / regenerate links, and
    ``codeCopy(message_id, block)`` for a code block's copy link."""

    action = Signal(str, int)
    codeCopy = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setAcceptDrops(False)  # a dropped model goes to the window, not into the text
        self.anchorClicked.connect(self._on_anchor)
        self._messages: list[ShownMessage] = []
        self._cache: dict[tuple, str] = {}
        self._placeholder = ""
        self._colors = chat_colors(self.palette())
        self._dark = self._colors.dark
        self._outside: frozenset[int] = frozenset()  # ids of messages the model no longer sees
        self._outside_note = ""
        self.document().setDocumentMargin(12)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt API)
        """A theme switch (View → Theme, or the desktop's): bubbles follow the new palette."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._colors = chat_colors(self.palette())
            self._dark = self._colors.dark
            self._cache.clear()
            self._render()

    def loadResource(self, kind: int, url: QUrl) -> object:  # noqa: N802 (Qt API)
        return None  # never load images or anything else a message refers to

    # ------------------------------------------------------------------ content
    def set_placeholder(self, html_text: str) -> None:
        self._placeholder = html_text
        if not self._messages:
            self._render()

    def set_messages(self, messages: list[ShownMessage]) -> None:
        self._messages = list(messages)
        self._render(scroll_to_end=True)
        QTimer.singleShot(0, self.scroll_to_end)  # again once the document is laid out

    def scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def set_outside(self, ids: set[int] | frozenset[int], note: str) -> None:
        """Mark the messages the model does not see and the line that says so."""
        ids, note = frozenset(ids), note
        if (ids, note) != (self._outside, self._outside_note):
            self._outside, self._outside_note = ids, note
            self._cache.clear()
            self._render()

    def update_last(self, message: ShownMessage) -> None:
        """Replace the last message (the streaming reply) and keep following it if at the end."""
        if self._messages and self._messages[-1].id == message.id:
            self._messages[-1] = message
        else:
            self._messages.append(message)
        self._render()

    def messages(self) -> list[ShownMessage]:
        return list(self._messages)

    # ------------------------------------------------------------------ rendering
    def _render(self, scroll_to_end: bool = False) -> None:
        bar = self.verticalScrollBar()
        at_end = scroll_to_end or bar.value() >= bar.maximum() - 4
        position = bar.value()
        if not self._messages:
            self.setHtml(self._placeholder)
            return
        last_assistant = max((m.id for m in self._messages if m.role == "assistant"), default=None)
        last_outside = max((i for i, m in enumerate(self._messages) if m.id in self._outside), default=None)
        parts = []
        for i, m in enumerate(self._messages):
            parts.append(self._bubble(m, m.id == last_assistant))
            if i == last_outside and self._outside_note:
                parts.append(self._note_line(self._outside_note))
        self.setHtml("".join(parts))
        bar.setValue(bar.maximum() if at_end else position)

    def _bubble(self, m: ShownMessage, is_last_reply: bool) -> str:
        key = (m.id, m.content, m.complete, m.meta, is_last_reply, m.end_reason, m.streaming)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        user = m.role == "user"
        dark, colors = self._dark, self._colors
        bg = colors.user_bg if user else colors.assistant_bg
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
        body = (
            escape_plain(m.content)
            if user
            else self._with_copy_links(render_markdown(m.content, dark=dark), m.id)
        )
        if not m.content and not user:
            body = "<i>…</i>"
        dim = colors.muted
        if m.id in self._outside:
            body = (
                f'<p style="margin:0; color:{dim}; font-size:small;">outside the model\'s context</p>{body}'
            )
        links = [f'<a style="color:{colors.link};" href="kvdeck:copy/{m.id}">copy</a>']
        if user:
            links.append(f'<a style="color:{colors.link};" href="kvdeck:edit/{m.id}">edit</a>')
        elif is_last_reply and m.id > 0:
            links.append(f'<a style="color:{colors.link};" href="kvdeck:regenerate/{m.id}">regenerate</a>')
        meta = f' <span style="color:{dim};">{html.escape(m.meta)}</span>' if m.meta else ""
        status = self._status(m, dim)
        out = (
            f'<table width="100%" cellspacing="0" cellpadding="10" style="background-color:{bg};'
            f'color:{colors.text}; margin-bottom:10px;"><tr><td>'
            f'<p style="margin:0;"><b>{who}</b>{status}{meta}'
            f'&nbsp;&nbsp;<span style="font-size:small;">{" · ".join(links)}</span></p>'
            f"{body}</td></tr></table>"
        )
        if m.complete:
            if len(self._cache) > 2000:
                self._cache.clear()
            self._cache[key] = out
        return out

    def _status(self, m: ShownMessage, dim: str) -> str:
        """How a reply ended: nothing while it streams or when the model finished it."""
        if m.streaming:
            return f' <span style="color:{dim};">writing…</span>'
        words = END_REASONS.get(m.end_reason or "", "")
        if words:
            return f' <span style="color:{dim};">— {html.escape(words)}</span>'
        if not m.complete and m.role == "assistant":
            return f' <span style="color:{self._colors.error};">(incomplete)</span>'
        return ""

    def _note_line(self, note: str) -> str:
        colour = self._colors.muted
        return f'<p align="center" style="color:{colour}; margin-bottom:10px;">— {html.escape(note)} —</p>'

    def _with_copy_links(self, body: str, msg_id: int) -> str:
        """A "copy code" link above each code block (kvdeck:code/<message>-<block>)."""
        count = iter(range(1 << 30))
        return _PRE.sub(
            lambda _m: (
                f'<p align="right" style="margin:0; font-size:small;">'
                f'<a style="color:{self._colors.link};" href="kvdeck:code/{msg_id}-{next(count)}">copy code</a>'
                f"</p><pre"
            ),
            body,
        )

    # ------------------------------------------------------------------ links
    def _on_anchor(self, url: QUrl) -> None:
        if url.scheme() == "kvdeck":
            name, _, ident = url.path().partition("/")
            msg, _, block = ident.partition("-")
            if name == "code" and msg.isdigit() and block.isdigit():
                self.codeCopy.emit(int(msg), int(block))
            elif ident.isdigit():
                self.action.emit(name, int(ident))
        elif url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)
