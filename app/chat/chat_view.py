"""The conversation transcript: one read-only rich-text view with per-message actions.

Finished messages are rendered once and cached; while a reply streams only that message is
rendered again. Actions (copy, edit, regenerate) are links with a private ``kvdeck:`` scheme, so
the whole transcript stays one selectable, searchable document. Nothing is ever fetched: the
view refuses every resource, and web links open in the user's browser only when clicked.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QTextBrowser, QWidget

from app.chat.markdown_view import escape_plain, render_markdown
from app.theme import chat_colors, is_dark


@dataclass(frozen=True)
class ShownMessage:
    id: int
    role: str
    content: str
    complete: bool
    meta: str = ""


__all__ = ["ChatView", "ShownMessage", "is_dark"]


class ChatView(QTextBrowser):
    """Emits ``action(name, message_id)`` for the copy / edit / regenerate links."""

    action = Signal(str, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setAcceptDrops(False)  # a dropped model goes to the window, not into the text
        self.anchorClicked.connect(self._on_anchor)
        self._messages: list[ShownMessage] = []
        self._cache: dict[tuple[int, str, bool, str, bool], str] = {}
        self._placeholder = ""
        self._colors = chat_colors(self.palette())
        self._dark = self._colors.dark
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
        parts = [self._bubble(m, m.id == last_assistant) for m in self._messages]
        self.setHtml("".join(parts))
        bar.setValue(bar.maximum() if at_end else position)

    def _bubble(self, m: ShownMessage, is_last_reply: bool) -> str:
        key = (m.id, m.content, m.complete, m.meta, is_last_reply)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        user = m.role == "user"
        dark, colors = self._dark, self._colors
        bg = colors.user_bg if user else colors.assistant_bg
        who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
        body = escape_plain(m.content) if user else render_markdown(m.content, dark=dark)
        if not m.content and not user:
            body = "<i>…</i>"
        links = [f'<a style="color:{colors.link};" href="kvdeck:copy/{m.id}">copy</a>']
        if user:
            links.append(f'<a style="color:{colors.link};" href="kvdeck:edit/{m.id}">edit</a>')
        elif is_last_reply and m.id > 0:
            links.append(f'<a style="color:{colors.link};" href="kvdeck:regenerate/{m.id}">regenerate</a>')
        status = "" if m.complete else f' <span style="color:{colors.error};">(incomplete)</span>'
        meta = f' <span style="color:{colors.muted};">{html.escape(m.meta)}</span>' if m.meta else ""
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

    # ------------------------------------------------------------------ links
    def _on_anchor(self, url: QUrl) -> None:
        if url.scheme() == "kvdeck":
            name, _, ident = url.path().partition("/")
            if ident.isdigit():
                self.action.emit(name, int(ident))
        elif url.scheme() in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)
