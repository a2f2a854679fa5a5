"""Fitting a conversation to the context before each reply, and remembering where it was cut.

``engine.chat.conversation.fit_conversation`` tokenizes through the runtime, so it runs on a
background thread (``app.background``). One fit runs at a time: each has a ticket, and the
outcome of a fit that was cancelled or replaced meanwhile is dropped. The cut a fit chose is
stored per conversation as the id of the first kept message, so the next reply keeps the same
prompt start and the runtime reuses its cached prefix instead of prefilling it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject

from app.background import run_in_background
from engine import protocol as P
from engine.chat.conversation import fit_conversation
from engine.chat.overflow import Fitted
from engine.chat.template import ChatMessage
from engine.storage.store import ChatStore


class ContextFit:
    """The chat pane's fits: start one, cancel it, remember its cut (see the module docstring)."""

    def __init__(self, store: ChatStore, parent: QObject, write_quietly: Callable[..., None]) -> None:
        self._store = store
        self._parent = parent  # owns the background workers
        self._write_quietly = write_quietly
        self._ticket = 0  # of the fit running in the background (0: none)

    @property
    def busy(self) -> bool:
        return bool(self._ticket)

    def cancel(self) -> None:
        """Forget the running fit: its outcome, when it comes, is dropped."""
        self._ticket = 0

    def start(
        self,
        conv_id: int,
        info: P.Loaded,
        tokenize: Callable[[str], list[int]],
        system: str,
        *,
        max_tokens: int,
        policy: str,
        on_fitted: Callable[[list[int], Fitted], None],
        on_failed: Callable[[BaseException], None],
    ) -> None:
        """Fit the conversation's turns; ``on_fitted(message ids, fitted)`` or ``on_failed(exc)``
        runs on the GUI thread unless the fit was cancelled or replaced first."""
        ids, turns = self._history(conv_id)
        conv = self._store.get_conversation(conv_id)
        cut_id = conv.settings.get("cut_id") if conv else None
        self._ticket = ticket = time.monotonic_ns()
        run_in_background(
            fit_conversation,
            tokenize,
            info,
            system,
            turns,
            max_tokens=max_tokens,
            policy=policy,
            previous_cut=ids.index(cut_id) if cut_id in ids else 0,
            parent=self._parent,
            name="kvdeck-fit-context",
            on_result=lambda fitted: self._deliver(ticket, on_fitted, ids, fitted),
            on_error=lambda exc: self._deliver(ticket, on_failed, exc),
        )

    def remember(self, conv_id: int, ids: list[int], fitted: Fitted) -> list[int]:
        """Store the fit's cut and what it left out; returns the ids of the messages left out."""
        dropped = [ids[i] for i in fitted.dropped]
        state = {
            "cut_id": ids[fitted.cut] if 0 < fitted.cut < len(ids) else None,
            "dropped_ids": dropped or None,
            "note": fitted.note or None,
            "dropped_tokens": fitted.dropped_tokens or None,
        }
        self._write_quietly(self._store.set_conversation_settings, conv_id, state)
        return dropped

    def _deliver(self, ticket: int, then: Callable[..., None], *args: Any) -> None:
        if ticket == self._ticket:
            self._ticket = 0
            then(*args)

    def _history(self, conv_id: int) -> tuple[list[int], list[ChatMessage]]:
        """The turns a prompt is built from (an empty reply is no turn), with their message ids."""
        msgs = [
            m
            for m in self._store.messages(conv_id)
            if m.role in ("user", "assistant") and (m.content or m.role == "user")
        ]
        return [m.id for m in msgs], [ChatMessage(m.role, m.content) for m in msgs]  # type: ignore[arg-type]
