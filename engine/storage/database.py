"""One SQLite file for the chat store: opening it, one committed transaction per write, and
what happens when the disk fails.

Durability: every write is its own committed transaction, in WAL mode with ``synchronous=NORMAL``,
so a killed process (even ``kill -9``) loses nothing that was committed.

Threads: one connection with ``check_same_thread=False``, every use guarded by a lock, so the GUI
thread and a saver thread may share one store.

Errors: any sqlite3 or OS failure becomes a `StoreError` with a one-line message, such as
"cannot open chat history at /x/kvdeck.sqlite3: attempt to write a readonly database". A write
that fails because of the disk moves the store into memory (`engine.storage.fallback`).

Split from `engine.storage.store`, which holds the queries (conversations, messages, settings);
schema and its migrations: `engine.storage.schema`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from engine.core.errors import StoreError
from engine.storage.fallback import IN_MEMORY_NOTE, StoreDegraded, memory_clone
from engine.storage.identity import os_reason

BUSY_TIMEOUT_S = 5.0

_Self = TypeVar("_Self", bound="Database")


class Database:
    """One SQLite file behind a lock; subclasses add the queries (``ChatStore``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._last_time = 0.0
        self.in_memory = str(path) == ":memory:"  # True also after a disk failure (fallback)
        conn = None
        try:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise OSError(f"{self.path.parent} is not a folder") from exc
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._prepare(conn)
        except (StoreError, sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise self._fail("open", exc) from exc
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Bring a just-opened file up to date (the schema); a failure fails the open."""

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._read("read the schema version of") as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    def _now(self) -> float:
        # Strictly increasing within this store, so "most recently updated" is well defined.
        now = max(time.time(), self._last_time + 1e-6)
        self._last_time = now
        return now

    def _fail(self, action: str, exc: BaseException) -> StoreError:
        reason = str(exc) if isinstance(exc, StoreError) else os_reason(exc)
        return StoreError(f"cannot {action} chat history at {self.path}: {reason}")

    def _degrade(self, error: StoreError, cause: BaseException) -> StoreError:
        """`error` as it stands, or `StoreDegraded` after moving into memory (called with the
        lock held, after the failed transaction was rolled back)."""
        conn = self._conn
        memory = None if conn is None or self.in_memory else memory_clone(conn, cause)
        if conn is None or memory is None:
            return error
        self._conn, self.in_memory = memory, True
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        return StoreDegraded(f"{error} — {IN_MEMORY_NOTE}")

    def _connection(self, action: str) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"cannot {action} chat history at {self.path}: it is closed")
        return self._conn

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection(action)
            try:
                yield conn
            except (sqlite3.Error, OSError) as exc:
                raise self._fail(action, exc) from exc

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One committed transaction; rolled back on any error."""
        with self._lock:
            conn = self._connection(action)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, OSError) as exc:
                raise self._degrade(self._fail(action, exc), exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, (sqlite3.Error, OSError)):  # a full disk: go on in memory
                    raise self._degrade(self._fail(action, exc), exc) from exc
                raise
