"""When the chat history cannot be written: keep chatting, in memory, and say so once.

A full disk or a data folder that turned read-only must not stop the user mid-conversation.
On the first write that fails for such a reason, the store copies everything it holds into an
in-memory SQLite database (reading still works) and carries on there; the failing call raises
`StoreDegraded`, whose message tells the user that nothing from now on is saved, and which the
caller may simply retry. At start-up, `ChatStore.memory_copy` opens an unwritable history
read-only, so old conversations stay visible. Kept apart from `engine.storage.store` (which
calls these from its write path) because it is about failure policy, not storage; it works on
connections and never imports the store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.core.errors import StoreError

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


def memory_clone(conn: sqlite3.Connection, cause: BaseException) -> sqlite3.Connection | None:
    """An in-memory copy of `conn` when `cause` is a disk problem (the store then moves onto
    it and closes `conn`), else None: the error is about the data, not the disk."""
    if not _disk_problem(cause):
        return None
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        conn.backup(memory)
        memory.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        memory.close()
        return None
    return memory


def restore_read_only(path: Path, into: sqlite3.Connection, schema_version: int) -> None:
    """Copy an unwritable history file at `path` into the connection `into` (nothing when
    there is none, it cannot be read, or it has another schema version)."""
    if not path.is_file():
        return
    try:
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            if src.execute("PRAGMA user_version").fetchone()[0] == schema_version:
                src.backup(into)
        finally:
            src.close()
    except (sqlite3.Error, OSError):
        pass
