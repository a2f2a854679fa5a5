"""Chat history and settings in one SQLite file (stdlib ``sqlite3``): the queries.

A streaming reply is stored early with ``complete=False`` and updated every half second or so;
after a crash it reopens as a partial, incomplete message. The file itself (durability, threads,
one-line errors, the move into memory when the disk fails) is `engine.storage.database`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.core.errors import StoreError
from engine.storage.database import Database
from engine.storage.fallback import restore_read_only
from engine.storage.identity import DEFAULT_TITLE
from engine.storage.records import Conversation, Message, SearchHit
from engine.storage.schema import SCHEMA_VERSION, migrate

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _loads(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


class ChatStore(Database):
    """Conversations, messages and settings in one SQLite file."""

    @classmethod
    def open_default(cls) -> ChatStore:
        """The store at `engine.core.paths.db_path()`."""
        from engine.core import paths

        return cls(paths.db_path())

    @classmethod
    def memory_copy(cls, path: Path) -> ChatStore:
        """An in-memory store holding whatever an unwritable history file at `path` contains
        (empty when there is none or it cannot be read)."""
        store = cls(":memory:")
        assert store._conn is not None
        restore_read_only(path, store._conn, SCHEMA_VERSION)
        return store

    def _prepare(self, conn: sqlite3.Connection) -> None:
        migrate(conn)
        conn.execute("DELETE FROM conversations WHERE deleted IS NOT NULL")  # undo is over

    # -- conversations ----------------------------------------------------------------------

    _CONV_COLS = "id, title, model_path, model_key, system_prompt, created, updated, settings"

    @staticmethod
    def _conversation(row: tuple) -> Conversation:
        cid, title, model_path, key, system_prompt, created, updated, settings = row
        value = _loads(settings, {})
        return Conversation(
            cid,
            title,
            model_path,
            key,
            system_prompt,
            created,
            updated,
            value if isinstance(value, dict) else {},
        )

    def create_conversation(
        self,
        title: str = DEFAULT_TITLE,
        model_path: str | Path | None = None,
        model_key: str | None = None,
        system_prompt: str = "",
    ) -> Conversation:
        with self._write("write to") as conn:
            now = self._now()
            mp = None if model_path is None else str(model_path)
            cur = conn.execute(
                "INSERT INTO conversations (title, model_path, model_key, system_prompt, created,"
                " updated) VALUES (?, ?, ?, ?, ?, ?)",
                (title, mp, model_key, system_prompt, now, now),
            )
            assert cur.lastrowid is not None  # an INSERT into a rowid table sets it
            return Conversation(cur.lastrowid, title, mp, model_key, system_prompt, now, now, {})

    def list_conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        with self._read("read") as conn:
            sql = (
                f"SELECT {self._CONV_COLS} FROM conversations WHERE deleted IS NULL"
                " ORDER BY updated DESC, id DESC"
            )
            rows = conn.execute(sql).fetchall()
        return [self._conversation(row) for row in rows]

    def get_conversation(self, conv_id: int) -> Conversation | None:
        with self._read("read") as conn:
            sql = f"SELECT {self._CONV_COLS} FROM conversations WHERE id = ? AND deleted IS NULL"
            row = conn.execute(sql, (conv_id,)).fetchone()
        return None if row is None else self._conversation(row)

    def _update_conversation(self, conv_id: int, assignments: str, values: tuple) -> None:
        with self._write("write to") as conn:
            sql = f"UPDATE conversations SET {assignments}, updated = ? WHERE id = ?"
            cur = conn.execute(sql, (*values, self._now(), conv_id))
            if cur.rowcount == 0:
                raise StoreError(f"conversation {conv_id} no longer exists")

    def rename_conversation(self, conv_id: int, title: str) -> None:
        self._update_conversation(conv_id, "title = ?", (title,))

    def set_system_prompt(self, conv_id: int, text: str) -> None:
        self._update_conversation(conv_id, "system_prompt = ?", (text,))

    def set_conversation_model(
        self, conv_id: int, model_path: str | Path | None, model_key: str | None
    ) -> None:
        mp = None if model_path is None else str(model_path)
        self._update_conversation(conv_id, "model_path = ?, model_key = ?", (mp, model_key))

    def set_conversation_settings(self, conv_id: int, settings: dict[str, Any]) -> dict[str, Any]:
        """Merge `settings` into the conversation's (a None value removes a key); returns them."""
        with self._write("write to") as conn:
            row = conn.execute("SELECT settings FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            if row is None:
                raise StoreError(f"conversation {conv_id} no longer exists")
            merged = _loads(row[0], {})
            merged = merged if isinstance(merged, dict) else {}
            merged.update(settings)
            merged = {k: v for k, v in merged.items() if v is not None}
            conn.execute("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(merged), conv_id))
        return merged

    def delete_conversation(self, conv_id: int) -> None:
        """Hide a conversation (undo with `restore_conversation` until the store is reopened,
        when hidden ones are deleted for good); deleting a missing one is a no-op."""
        with self._write("write to") as conn:
            conn.execute("UPDATE conversations SET deleted = ? WHERE id = ?", (time.time(), conv_id))

    def restore_conversation(self, conv_id: int) -> bool:
        """Undo `delete_conversation`; False when it is gone for good."""
        with self._write("write to") as conn:
            cur = conn.execute(
                "UPDATE conversations SET deleted = NULL WHERE id = ? AND deleted IS NOT NULL", (conv_id,)
            )
            return cur.rowcount > 0

    def purge_deleted(self) -> int:
        """Delete hidden conversations and their messages for good; returns how many."""
        with self._write("write to") as conn:
            return conn.execute("DELETE FROM conversations WHERE deleted IS NOT NULL").rowcount

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Conversations whose title or messages contain every word of `query` (prefixes match:
        "quant" finds "quantization"), most recent first; SQLite FTS5 for the messages."""
        words = [w.replace('"', '""') for w in query.split()][:16]
        if not words:
            return []
        match = " ".join(f'"{w}"*' for w in words)
        like = [f"%{w}%" for w in query.split()[:16]]
        with self._read("search") as conn:
            rows = conn.execute(
                "SELECT c.id, c.title, m.id, snippet(messages_fts, 0, '[', ']', '…', 12)"
                " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
                " JOIN conversations c ON c.id = m.conversation_id"
                " WHERE messages_fts MATCH ? AND c.deleted IS NULL"
                " ORDER BY c.updated DESC, m.id DESC LIMIT ?",
                (match, limit),
            ).fetchall()
            titles = conn.execute(
                "SELECT id, title FROM conversations WHERE deleted IS NULL AND "
                + " AND ".join("title LIKE ?" for _ in like)
                + " ORDER BY updated DESC LIMIT ?",
                (*like, limit),
            ).fetchall()
        hits = [SearchHit(cid, title, None, title) for cid, title in titles]
        seen = {h.conversation_id for h in hits}
        for cid, title, mid, snip in rows:
            if cid not in seen:
                seen.add(cid)
                hits.append(SearchHit(cid, title, mid, " ".join(snip.split())))
        return hits[:limit]

    # -- messages ---------------------------------------------------------------------------

    _MSG_COLS = "id, conversation_id, role, content, complete, created, n_tokens, tokens_per_s, end_reason"

    @staticmethod
    def _message(row: tuple) -> Message:
        mid, cid, role, content, complete, created, n_tokens, tps, end = row
        return Message(mid, cid, role, content, bool(complete), created, n_tokens, tps, end)

    def add_message(
        self,
        conv_id: int,
        role: str,
        content: str,
        complete: bool = True,
        n_tokens: int | None = None,
        tokens_per_s: float | None = None,
    ) -> Message:
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r}")
        with self._write("write to") as conn:
            now = self._now()
            cur = conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv_id))
            if cur.rowcount == 0:
                raise StoreError(f"conversation {conv_id} no longer exists")
            values = (conv_id, role, content, bool(complete), now, n_tokens, tokens_per_s)
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, content, complete, created, n_tokens,"
                " tokens_per_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            assert cur.lastrowid is not None  # an INSERT into a rowid table sets it
            return Message(cur.lastrowid, *values)

    def update_message(
        self,
        msg_id: int,
        content: str,
        complete: bool,
        n_tokens: int | None = None,
        tokens_per_s: float | None = None,
        end_reason: str | None = None,
    ) -> None:
        """Replace a message's text and status (called repeatedly while a reply streams)."""
        with self._write("write to") as conn:
            cur = conn.execute(
                "UPDATE messages SET content = ?, complete = ?, n_tokens = ?, tokens_per_s = ?,"
                " end_reason = ? WHERE id = ?",
                (content, bool(complete), n_tokens, tokens_per_s, end_reason, msg_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"message {msg_id} no longer exists")

    def delete_message(self, msg_id: int) -> None:
        """Delete one message (an empty reply that never produced text: no empty bubble stays
        behind, even after a restart); a missing one is a no-op."""
        with self._write("write to") as conn:
            conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))

    def messages(self, conv_id: int) -> list[Message]:
        """The conversation's messages in the order they were added."""
        with self._read("read") as conn:
            sql = f"SELECT {self._MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY id"
            rows = conn.execute(sql, (conv_id,)).fetchall()
        return [self._message(row) for row in rows]

    def truncate_after(self, conv_id: int, msg_id: int, inclusive: bool) -> int:
        """Delete the messages after `msg_id` (and `msg_id` itself when `inclusive`).

        For edit-and-resend and regenerate. Returns how many messages were deleted.
        """
        with self._write("write to") as conn:
            sql = "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?"
            if conn.execute(sql, (msg_id, conv_id)).fetchone() is None:
                raise StoreError(f"message {msg_id} is not part of conversation {conv_id}")
            sql = f"DELETE FROM messages WHERE conversation_id = ? AND id {'>=' if inclusive else '>'} ?"
            cur = conn.execute(sql, (conv_id, msg_id))
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (self._now(), conv_id))
            return cur.rowcount

    # -- settings ---------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read("read settings from") as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else _loads(row[0], default)

    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (TypeError otherwise)."""
        encoded = json.dumps(value)
        with self._write("write settings to") as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, encoded),
            )

    @staticmethod
    def _model_row(conn: sqlite3.Connection, model_key: str) -> dict[str, Any]:
        sql = "SELECT value FROM model_settings WHERE model_key = ?"
        row = conn.execute(sql, (model_key,)).fetchone()
        value = _loads(row[0], {}) if row else {}
        return value if isinstance(value, dict) else {}

    def get_model_settings(self, model_key: str) -> dict[str, Any]:
        with self._read("read settings from") as conn:
            return self._model_row(conn, model_key)

    def set_model_settings(self, model_key: str, settings: dict[str, Any], replace: bool = False) -> dict:
        """Merge `settings` into the model's settings (a None value removes that key), or
        replace them all when `replace`. Returns the resulting settings."""
        with self._write("write settings to") as conn:
            merged = {} if replace else self._model_row(conn, model_key)
            merged.update(settings)
            merged = {k: v for k, v in merged.items() if v is not None}
            conn.execute(
                "INSERT INTO model_settings (model_key, value) VALUES (?, ?) ON CONFLICT(model_key)"
                " DO UPDATE SET value = excluded.value",
                (model_key, json.dumps(merged)),
            )
        return merged
