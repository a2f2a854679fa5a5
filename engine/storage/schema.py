"""The chat database's schema, version by version, and the migrations between versions.

Schema changes: bump `SCHEMA_VERSION` and add a step to `_MIGRATIONS`; `migrate()` upgrades
older files step by step (tracked in ``PRAGMA user_version``) and refuses newer ones. A file
written by an older KV Deck is upgraded in place on first open; nothing in it is lost.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable

from engine.core.errors import StoreError

SCHEMA_VERSION = 2

_SCHEMA_1 = (
    "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, model_path TEXT,"
    " model_key TEXT, system_prompt TEXT NOT NULL DEFAULT '', created REAL NOT NULL,"
    " updated REAL NOT NULL)",
    "CREATE INDEX conversations_by_updated ON conversations(updated DESC, id DESC)",
    "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL"
    " REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL,"
    " complete INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL, n_tokens INTEGER, tokens_per_s REAL)",
    "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE model_settings (model_key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_1:
        conn.execute(statement)


# Version 2: why each reply ended, per-conversation settings (sampling, overflow policy and
# its cut), soft deletion (undo), and full-text search over messages and titles (FTS5).
_SCHEMA_2 = (
    "ALTER TABLE messages ADD COLUMN end_reason TEXT",
    "ALTER TABLE conversations ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE conversations ADD COLUMN deleted REAL",
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages',"
    " content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "INSERT INTO messages_fts(rowid, content) SELECT id, content FROM messages",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN"
    " INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);"
    " END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN"
    " INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);"
    " INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
)


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_2:
        conn.execute(statement)


# _MIGRATIONS[n] upgrades a version n-1 database to version n.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Upgrade the schema step by step to `target`; returns the version found before.

    Each step runs in its own transaction together with its ``user_version`` bump. The
    connection must be in autocommit mode (``isolation_level=None``). Raises `StoreError` for
    a database written by a newer KV Deck.
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > target:
        raise StoreError(
            f"it uses schema version {found}, newer than this KV Deck understands ({target}); "
            "please update KV Deck"
        )
    for version in range(found + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return found
