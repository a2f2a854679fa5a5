"""Conversations as files: OpenAI's message list (JSON) in and out, and Markdown out.

The JSON form is what `kvdeck chat --history FILE.json` reads and what the window exports and
imports, so a conversation moves between KV Deck, the CLI and any OpenAI-style tool unchanged.
Reading is strict and says in one line what is wrong: a history file is user input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.chat.template import ChatMessage
from engine.core.errors import KvDeckError

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_HISTORY_BYTES = 64 << 20


class HistoryError(KvDeckError):
    """A history file that is not an OpenAI-style message list."""


def text_of(content: Any) -> str:
    """The text of an OpenAI message's content: a string, or a list of text parts joined.

    Raises ValueError saying what is wrong ("only text content parts are supported", or
    "content must be a string or a list of text parts"); callers prefix where it was."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError("content must be a string or a list of text parts")


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    try:
        return text_of(content)
    except ValueError as exc:
        raise HistoryError(f"{where}: {exc}") from None


def from_openai(data: Any) -> tuple[str, list[ChatMessage]]:
    """(system prompt, turns) from a message list, or {"messages": [...]} as exported."""
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list):
        raise HistoryError(
            'the history must be a JSON list of messages ([{"role": "user", "content": "..."}, ...])'
        )
    system: list[str] = []
    turns: list[ChatMessage] = []
    for i, msg in enumerate(data):
        where = f"message {i + 1}"
        if not isinstance(msg, dict):
            raise HistoryError(f"{where} is not an object with role and content")
        role = _ROLES.get(str(msg.get("role")))
        if role is None:
            raise HistoryError(
                f"{where} has role {msg.get('role')!r}; expected system, developer, user or assistant"
            )
        text = _text(msg.get("content"), where)
        if role == "system":
            if turns:
                raise HistoryError(f"{where}: a system message must come before the conversation")
            system.append(text)
        else:
            turns.append(ChatMessage(role, text))  # type: ignore[arg-type]
    return "\n\n".join(system), turns


def read_history(path: str | Path) -> tuple[str, list[ChatMessage]]:
    """Read a history file; every problem is one HistoryError line naming the file."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_HISTORY_BYTES:
            raise HistoryError(f"{p.name} is larger than {MAX_HISTORY_BYTES >> 20} MiB")
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HistoryError(f"no such history file: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"cannot read {p.name}: {exc}") from None
    except ValueError as exc:
        raise HistoryError(f"{p.name} is not JSON ({exc})") from None
    try:
        return from_openai(data)
    except HistoryError as exc:
        raise HistoryError(f"{p.name}: {exc}") from None


def to_openai(system: str, turns: Sequence[ChatMessage]) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": t.role, "content": t.content} for t in turns]


def to_markdown(title: str, system: str, turns: Sequence[ChatMessage], model: str = "") -> str:
    """A readable transcript: a heading per turn, the text as written (it is Markdown already)."""
    lines = [f"# {title}", ""]
    if model:
        lines += [f"*Model: {model}*", ""]
    if system.strip():
        lines += ["## System", "", system.strip(), ""]
    names = {"user": "You", "assistant": "Assistant"}
    for t in turns:
        lines += [f"## {names.get(t.role, t.role)}", "", t.content.strip(), ""]
    return "\n".join(lines)
