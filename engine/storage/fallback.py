"""When the chat history cannot be written: keep chatting, in memory, and say so once.

A full disk or a data folder that turned read-only must not stop the user mid-conversation.
On the first write that fails for such a reason, the store copies everything it holds into an
in-memory SQLite database (reading still works) and carries on there; the failing call raises
`StoreDegraded`, whose message tells the user that nothing from now on is saved, and which the
caller may simply retry. At start-up, `memory_copy` opens an unwritable history read-only, so
old conversations stay visible. Kept apart from `engine.storage.store` (which calls `degrade` from its
write path) because it is about failure policy, not storage.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core.errors import StoreError

if TYPE_CHECKING:
    from engine.storage.store import ChatStore

# sqlite primary result codes that mean "the disk, not the data": READONLY, IOERR, FULL, CANTOPEN
_DISK_CODES = frozenset({8, 10, 13, 14})
IN_MEMORY_NOTE = "chats are kept in memory from now on and are lost when KV Deck closes"


class StoreDegraded(StoreError):
    """The write failed on disk; the store now works in memory. Retrying the call succeeds."""


def _disk_problem(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DISK_CODES
    text = str(exc).lower()
    return any(w in text for w in ("full", "readonly", "read-only", "disk i/o"))


def degrade(store: ChatStore, error: StoreError, cause: BaseException) -> StoreError:
    """`error` as it stands, or `StoreDegraded` after moving `store` into memory (called with
    the store's lock held, after the failed transaction was rolled back)."""
    conn = store._conn
    if conn is None or store.in_memory or not _disk_problem(cause):
        return error
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        conn.backup(memory)
        memory.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        memory.close()
        return error
    store._conn = memory
    store.in_memory = True
    with contextlib.suppress(sqlite3.Error):
        conn.close()
    return StoreDegraded(f"{error} — {IN_MEMORY_NOTE}")


def memory_copy(path: Path) -> ChatStore:
    """An in-memory store holding whatever an unwritable history file at `path` contains
    (empty when there is none or it cannot be read)."""
    from engine.storage.store import SCHEMA_VERSION, ChatStore

    store = ChatStore(":memory:")
    store.in_memory = True
    if not path.is_file():
        return store
    try:
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            if src.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                assert store._conn is not None
                src.backup(store._conn)
        finally:
            src.close()
    except (sqlite3.Error, OSError):
        pass
    return store
