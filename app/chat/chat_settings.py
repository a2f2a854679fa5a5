"""Where a conversation's chat settings come from and go to (the store, three levels).

A conversation remembers its own sampling, reply length and overflow policy; a new conversation
starts from the loaded model's defaults (the last values used with that model), and a model never
used before from the global defaults. Edits write all three, so the next new chat continues where
the user left off, with this model or any other. Qt-free, but app-side: only the window uses it.
"""

from __future__ import annotations

from typing import Any

from engine.storage.identity import model_key
from engine.storage.store import ChatStore

#: Keys of a conversation's settings that the settings panel owns (the rest: overflow state).
PANEL_KEYS = ("preset", "sampling", "max_tokens", "overflow")


def effective_settings(store: ChatStore, conv_id: int | None, model_path: str | None) -> dict[str, Any]:
    """The panel's values for a conversation (None: a new one) with the model at ``model_path``."""
    values: dict[str, Any] = {
        "preset": store.get_setting("preset", None),
        "max_tokens": store.get_setting("max_tokens", None),
        "overflow": store.get_setting("overflow", None),
        "sampling": store.get_setting("sampling", None),
    }
    if model_path:
        chat = store.get_model_settings(model_key(model_path)).get("chat", {})
        if isinstance(chat, dict):
            values.update(chat)
    conv = store.get_conversation(conv_id) if conv_id else None
    if conv is not None:
        values.update({k: v for k, v in conv.settings.items() if k in PANEL_KEYS})
    return {k: v for k, v in values.items() if v is not None}


def save_settings(
    store: ChatStore, conv_id: int | None, model_path: str | None, values: dict[str, Any]
) -> None:
    """Remember edited panel values for the conversation, the model and as global defaults."""
    if conv_id:
        store.set_conversation_settings(conv_id, values)
    if model_path:
        store.set_model_settings(model_key(model_path), {"chat": values})
    for key, value in values.items():
        store.set_setting(key, value)
