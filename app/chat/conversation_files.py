"""Conversations as files, for the sidebar: Markdown and JSON out, JSON in (a round trip).

The formats are engine.chat.history's (OpenAI's message list), so a conversation exported here
is what ``kvdeck chat --history`` reads. The JSON export wraps the list as
``{"title", "model", "messages"}``; import takes that or a bare list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.chat.history import read_history, to_markdown, to_openai
from engine.chat.template import ChatMessage
from engine.core.errors import StoreError
from engine.storage.store import ChatStore


def file_name(title: str, fmt: str) -> str:
    """A safe file name from a title ("What is KV? / notes" -> "What is KV - notes.json")."""
    stem = re.sub(r"[^\w .,()-]+", "-", title).strip(" .-")[:80] or "conversation"
    return f"{stem}.{'md' if fmt == 'md' else 'json'}"


def _turns(store: ChatStore, conv_id: int) -> list[ChatMessage]:
    return [
        ChatMessage(m.role, m.content)  # type: ignore[arg-type]  # roles filtered below
        for m in store.messages(conv_id)
        if m.role in ("user", "assistant") and m.content
    ]


def export(store: ChatStore, conv_id: int, path: str | Path, fmt: str) -> None:
    conv = store.get_conversation(conv_id)
    if conv is None:
        raise StoreError(f"conversation {conv_id} no longer exists")
    turns = _turns(store, conv_id)
    model = Path(conv.model_path).name if conv.model_path else ""
    if fmt == "md":
        text = to_markdown(conv.title, conv.system_prompt, turns, model)
    else:
        text = json.dumps(
            {"title": conv.title, "model": model, "messages": to_openai(conv.system_prompt, turns)},
            ensure_ascii=False,
            indent=2,
        )
    Path(path).write_text(text + "\n", encoding="utf-8")


def import_json(store: ChatStore, path: str | Path) -> int:
    """A new conversation from a JSON file; returns its id. Bad files: one HistoryError line."""
    system, turns = read_history(path)
    title = Path(path).stem
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("title"), str) and data["title"].strip():
            title = data["title"].strip()
    except (OSError, ValueError):
        pass
    conv = store.create_conversation(title, system_prompt=system)
    for t in turns:
        store.add_message(conv.id, t.role, t.content)
    return conv.id
