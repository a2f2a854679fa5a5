"""Tests for engine.storage.store: chat history, settings, crash safety and error reporting."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.core.errors import KvDeckError, ModelFileError, StoreError
from engine.storage.identity import model_key, title_from_text
from engine.storage.records import Conversation, Message
from engine.storage.schema import SCHEMA_VERSION, migrate
from engine.storage.store import ChatStore

REPO_ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVDECK_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data" / "kvdeck.sqlite3"


@pytest.fixture
def store(db: Path):
    with ChatStore(db) as s:
        yield s


def assert_one_line_store_error(err: BaseException) -> str:
    assert isinstance(err, StoreError) and isinstance(err, KvDeckError)
    text = str(err)
    assert text and "\n" not in text
    return text


# -- conversations and messages ---------------------------------------------------------------


def test_conversation_round_trip(db: Path) -> None:
    with ChatStore(db) as s:
        conv = s.create_conversation()
        assert isinstance(conv, Conversation)
        assert conv.title == "New chat" and conv.system_prompt == "" and conv.model_path is None
        assert s.get_conversation(conv.id) == conv
        s.rename_conversation(conv.id, "Trip to Lisbon")
        s.set_system_prompt(conv.id, "You are terse.")
        s.set_conversation_model(conv.id, Path("/models/a.gguf"), "123-abcdef")
        expected = s.get_conversation(conv.id)
    with ChatStore(db) as s:
        again = s.get_conversation(conv.id)
    assert again == expected
    assert again.title == "Trip to Lisbon"
    assert again.system_prompt == "You are terse."
    assert again.model_path == "/models/a.gguf" and again.model_key == "123-abcdef"
    assert again.created == conv.created and again.updated > conv.updated


def test_create_with_arguments_and_missing_conversation(store: ChatStore) -> None:
    conv = store.create_conversation("T", model_path="/m.gguf", model_key="k", system_prompt="sp")
    assert (conv.title, conv.model_path, conv.model_key, conv.system_prompt) == ("T", "/m.gguf", "k", "sp")
    assert store.get_conversation(conv.id + 100) is None
    with pytest.raises(StoreError):
        store.rename_conversation(conv.id + 100, "x")
    with pytest.raises(StoreError):
        store.add_message(conv.id + 100, "user", "hi")
    with pytest.raises(StoreError):
        store.update_message(12345, "x", True)
    with pytest.raises(ValueError):
        store.add_message(conv.id, "robot", "hi")


def test_list_conversations_most_recently_updated_first(store: ChatStore) -> None:
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    c = store.create_conversation("c")
    assert [x.title for x in store.list_conversations()] == ["c", "b", "a"]
    store.add_message(a.id, "user", "hello")
    assert [x.title for x in store.list_conversations()] == ["a", "c", "b"]
    store.rename_conversation(b.id, "b2")
    assert [x.title for x in store.list_conversations()] == ["b2", "a", "c"]
    store.delete_conversation(c.id)
    assert [x.title for x in store.list_conversations()] == ["b2", "a"]


def test_messages_round_trip_in_order(db: Path) -> None:
    with ChatStore(db) as s:
        conv = s.create_conversation()
        other = s.create_conversation()
        m1 = s.add_message(conv.id, "system", "be nice")
        m2 = s.add_message(conv.id, "user", "héllo ☃\nsecond line")
        s.add_message(other.id, "user", "elsewhere")
        m3 = s.add_message(conv.id, "assistant", "hi!", n_tokens=3, tokens_per_s=41.5)
        assert isinstance(m3, Message) and m3.complete is True
        assert m1.id < m2.id < m3.id
    with ChatStore(db) as s:
        msgs = s.messages(conv.id)
    assert msgs == [m1, m2, m3]
    assert [m.role for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1].content == "héllo ☃\nsecond line"
    assert (msgs[2].n_tokens, msgs[2].tokens_per_s) == (3, 41.5)
    assert all(m.conversation_id == conv.id for m in msgs)


def test_update_message_streaming(store: ChatStore) -> None:
    conv = store.create_conversation()
    reply = store.add_message(conv.id, "assistant", "", complete=False)
    assert reply.complete is False
    store.update_message(reply.id, "Hel", complete=False)
    assert store.messages(conv.id)[0].content == "Hel"
    assert store.messages(conv.id)[0].complete is False
    store.update_message(reply.id, "Hello.", complete=True, n_tokens=2, tokens_per_s=12.0)
    (final,) = store.messages(conv.id)
    assert (final.content, final.complete, final.n_tokens, final.tokens_per_s) == ("Hello.", True, 2, 12.0)


def test_incomplete_message_visible_after_reopen(db: Path) -> None:
    s = ChatStore(db)
    conv = s.create_conversation()
    s.add_message(conv.id, "user", "tell me a story")
    reply = s.add_message(conv.id, "assistant", "", complete=False)
    s.update_message(reply.id, "Once upon a", complete=False)
    # No close(): simulate the process going away without cleanup.
    del s
    with ChatStore(db) as s2:
        last = s2.messages(conv.id)[-1]
    assert (last.id, last.content, last.complete) == (reply.id, "Once upon a", False)


def test_truncate_after(store: ChatStore) -> None:
    conv = store.create_conversation()
    ids = [store.add_message(conv.id, r, f"m{i}").id for i, r in enumerate(["user", "assistant"] * 3)]
    other = store.create_conversation()
    other_msg = store.add_message(other.id, "user", "keep me")

    assert store.truncate_after(conv.id, ids[3], inclusive=False) == 2  # regenerate after ids[3]
    assert [m.id for m in store.messages(conv.id)] == ids[:4]
    assert store.truncate_after(conv.id, ids[2], inclusive=True) == 2  # edit-and-resend ids[2]
    assert [m.id for m in store.messages(conv.id)] == ids[:2]
    assert store.truncate_after(conv.id, ids[1], inclusive=False) == 0
    assert store.messages(other.id) == [other_msg]
    with pytest.raises(StoreError):
        store.truncate_after(conv.id, other_msg.id, inclusive=True)  # not in this conversation
    assert store.list_conversations()[0].id == conv.id  # truncation counts as an update


def test_delete_hides_until_undo_or_reopen_then_cascades(db: Path) -> None:
    with ChatStore(db) as s:
        conv = s.create_conversation()
        keep = s.create_conversation()
        for i in range(5):
            s.add_message(conv.id, "user", str(i))
        s.add_message(keep.id, "user", "keep")
        s.delete_conversation(conv.id)
        s.delete_conversation(conv.id)  # a second delete is a no-op
        assert s.get_conversation(conv.id) is None
        assert [c.id for c in s.list_conversations()] == [keep.id]
        assert s.restore_conversation(conv.id)  # undo
        assert [m.content for m in s.messages(conv.id)] == ["0", "1", "2", "3", "4"]
        s.delete_conversation(conv.id)
    with ChatStore(db) as s:  # reopening ends the chance to undo
        assert not s.restore_conversation(conv.id)
        assert s.messages(conv.id) == []
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    finally:
        raw.close()


def test_search_finds_words_of_old_replies_and_titles(db: Path) -> None:
    with ChatStore(db) as s:
        old = s.create_conversation("Trip planning")
        s.add_message(old.id, "user", "Where should I go?")
        reply = s.add_message(old.id, "assistant", "Consider the quantization of Lisbon's trams.")
        s.update_message(reply.id, "Lisbon has beautiful tiled façades.", True, end_reason="eog")
        other = s.create_conversation("Cooking")
        s.add_message(other.id, "user", "How long do eggs boil?")
        hits = s.search("facades")  # diacritics folded, FTS5 on the updated text
        assert [(h.conversation_id, h.message_id) for h in hits] == [(old.id, reply.id)]
        assert "[façades]" in hits[0].snippet
        assert not s.search("quantization")  # the old text left the index
        assert [h.conversation_id for h in s.search("cook")] == [other.id]  # title prefix
        assert s.search('"; DROP TABLE messages; --') == []  # words, never FTS syntax
        assert s.messages(old.id)[1].end_reason == "eog"


def test_conversation_settings_merge(db: Path) -> None:
    with ChatStore(db) as s:
        conv = s.create_conversation()
        s.set_conversation_settings(conv.id, {"overflow": "rolling", "sampling": {"top_k": 40}})
        s.set_conversation_settings(conv.id, {"overflow": "middle", "cut": 6})
        assert s.get_conversation(conv.id).settings == {
            "overflow": "middle",
            "cut": 6,
            "sampling": {"top_k": 40},
        }
        s.set_conversation_settings(conv.id, {"cut": None})
        assert "cut" not in s.list_conversations()[0].settings


def test_concurrent_threads(store: ChatStore) -> None:
    conv = store.create_conversation()
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(100):
                msg = store.add_message(conv.id, "user", f"{tag}{i}", complete=False)
                store.update_message(msg.id, f"{tag}{i}!", complete=True)
                store.list_conversations()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    msgs = store.messages(conv.id)
    assert len(msgs) == 300
    assert all(m.complete and m.content.endswith("!") for m in msgs)


def test_context_manager_closes_and_closed_store_raises(db: Path) -> None:
    with ChatStore(db) as s:
        s.create_conversation()
    s.close()  # idempotent
    with pytest.raises(StoreError) as info:
        s.list_conversations()
    assert "closed" in assert_one_line_store_error(info.value)


# -- crash safety -----------------------------------------------------------------------------

WRITER = r"""
import sys
from pathlib import Path
from engine.storage.store import ChatStore

store = ChatStore(Path(sys.argv[1]))
conv = store.create_conversation("kill test")
print("conv", conv.id, flush=True)
reply = store.add_message(conv.id, "assistant", "", complete=False)
print("reply", reply.id, flush=True)
i = 0
while True:
    msg = store.add_message(conv.id, "user", "message %d" % i)
    print("msg", msg.id, i, flush=True)
    store.update_message(reply.id, "x" * (i + 1), complete=False)
    print("len", i + 1, flush=True)
    i += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_keeps_committed_rows(db: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        assert proc.stdout is not None
        msg_count = 0
        while msg_count < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            msg_count += line.startswith("msg ")
        assert msg_count >= 200, (
            f"writer stopped early: {proc.stderr.read() if proc.poll() is not None else ''}"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    lines += proc.stdout.read().splitlines(keepends=True)  # printed (hence committed) before the kill
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    words = [line.split() for line in lines if line.endswith("\n")]  # ignore a half-printed line
    conv_id = next(int(w[1]) for w in words if w[0] == "conv")
    reply_id = next(int(w[1]) for w in words if w[0] == "reply")
    printed = {int(w[1]): int(w[2]) for w in words if w[0] == "msg"}
    last_len = max(int(w[1]) for w in words if w[0] == "len")

    with ChatStore(db) as s:
        msgs = {m.id: m for m in s.messages(conv_id)}
        conv = s.get_conversation(conv_id)
        s.add_message(conv_id, "user", "still writable after the crash")
    assert conv is not None and conv.title == "kill test"
    for msg_id, i in printed.items():
        assert msgs[msg_id].content == f"message {i}"
    reply = msgs[reply_id]
    assert reply.complete is False and len(reply.content) >= last_len
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        raw.close()


# -- errors -----------------------------------------------------------------------------------


def test_pragmas_and_schema_version(store: ChatStore, db: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_migrate_from_empty_and_refuse_newer(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path, isolation_level=None)
    assert migrate(raw) == 0
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert migrate(raw) == SCHEMA_VERSION  # idempotent
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError) as info:
        ChatStore(path)
    text = assert_one_line_store_error(info.value)
    assert str(path) in text and "newer" in text


def test_readonly_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    existing = tmp_path / "ro_existing"
    existing.mkdir()
    with ChatStore(existing / "kvdeck.sqlite3") as s:
        s.create_conversation()
    folder.chmod(0o500)
    existing.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permissions do not apply (running as root?)")
        for path in (folder / "kvdeck.sqlite3", existing / "kvdeck.sqlite3"):
            with pytest.raises(StoreError) as info:
                with ChatStore(path) as s:
                    s.create_conversation()
            text = assert_one_line_store_error(info.value)
            assert str(path) in text
    finally:
        folder.chmod(0o700)
        existing.chmod(0o700)


def test_unusable_location(tmp_path: Path) -> None:
    # Works as root too: a regular file where the folder should be, and a folder as the DB.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(StoreError) as info:
        ChatStore(blocker / "kvdeck.sqlite3")
    assert str(blocker) in assert_one_line_store_error(info.value)
    folder_db = tmp_path / "dir.sqlite3"
    folder_db.mkdir()
    with pytest.raises(StoreError) as info:
        ChatStore(folder_db)
    assert assert_one_line_store_error(info.value).startswith(f"cannot open chat history at {folder_db}")


def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "kvdeck.sqlite3"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        ChatStore(path)
    text = assert_one_line_store_error(info.value)
    assert text == f"cannot open chat history at {path}: file is not a database"
    assert path.read_bytes() == garbage  # left untouched for the user to inspect


def test_disk_full_is_a_store_error(store: ChatStore) -> None:
    conv = store.create_conversation()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError) as info:
        store.add_message(conv.id, "user", "y" * (4 * MiB))
    assert "full" in assert_one_line_store_error(info.value)
    # The failed transaction was rolled back and the store keeps working.
    assert store.messages(conv.id) == []
    store.add_message(conv.id, "user", "small")
    assert [m.content for m in store.messages(conv.id)] == ["small"]


# -- settings ---------------------------------------------------------------------------------


def test_settings_survive_reopen(db: Path) -> None:
    with ChatStore(db) as s:
        assert s.get_setting("missing") is None
        assert s.get_setting("missing", 7) == 7
        s.set_setting("theme", "dark")
        s.set_setting("window", {"w": 800, "h": 600, "max": False})
        s.set_setting("recent", ["/a.gguf", "/b.gguf"])
        s.set_setting("theme", "light")
        s.set_setting("nothing", None)
        with pytest.raises(TypeError):
            s.set_setting("bad", object())
    with ChatStore(db) as s:
        assert s.get_setting("theme") == "light"
        assert s.get_setting("window") == {"w": 800, "h": 600, "max": False}
        assert s.get_setting("recent") == ["/a.gguf", "/b.gguf"]
        assert s.get_setting("nothing", "default") is None


def test_model_settings_merge_and_replace(db: Path) -> None:
    with ChatStore(db) as s:
        assert s.get_model_settings("k1") == {}
        assert s.set_model_settings("k1", {"n_ctx": 4096, "temp": 0.7}) == {"n_ctx": 4096, "temp": 0.7}
        s.set_model_settings("k1", {"temp": 0.2, "top_p": 0.9})
        s.set_model_settings("k2", {"n_ctx": 512})
    with ChatStore(db) as s:
        assert s.get_model_settings("k1") == {"n_ctx": 4096, "temp": 0.2, "top_p": 0.9}
        s.set_model_settings("k1", {"top_p": None})  # None removes a key
        assert s.get_model_settings("k1") == {"n_ctx": 4096, "temp": 0.2}
        s.set_model_settings("k1", {"n_gpu_layers": 10}, replace=True)
        assert s.get_model_settings("k1") == {"n_gpu_layers": 10}
        assert s.get_model_settings("k2") == {"n_ctx": 512}


# -- helpers ----------------------------------------------------------------------------------


def test_model_key(tmp_path: Path) -> None:
    a = tmp_path / "a.gguf"
    a.write_bytes(os.urandom(3 * MiB + 123))
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(a, copy)
    key = model_key(a)
    size, digest = key.split("-")
    assert int(size) == 3 * MiB + 123 and len(digest) == 16
    assert model_key(copy) == key
    assert model_key(str(copy)) == key

    other = tmp_path / "b.gguf"
    other.write_bytes(os.urandom(3 * MiB + 123))
    assert model_key(other) != key
    # Same size, same head, different tail: still different.
    data = bytearray(a.read_bytes())
    data[-1] ^= 0xFF
    tail = tmp_path / "tail.gguf"
    tail.write_bytes(bytes(data))
    assert model_key(tail) != key
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF tiny")
    assert model_key(small).startswith("9-")
    with pytest.raises(ModelFileError):
        model_key(tmp_path / "missing.gguf")


def test_model_key_is_cheap_on_big_sparse_file(tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with open(big, "wb") as fh:
        fh.truncate(2 * 1024 * MiB)  # 2 GiB, sparse: only 2 MiB of it is read
    start = time.monotonic()
    assert model_key(big).startswith(f"{2 * 1024 * MiB}-")
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there", "Hello there"),
        ("\n\n   What is   KV cache?  \nmore text", "What is KV cache?"),
        ("", "New chat"),
        ("   \n\t\n", "New chat"),
    ],
)
def test_title_from_text(text: str, expected: str) -> None:
    assert title_from_text(text) == expected


def test_title_from_long_text() -> None:
    long = "Explain how the key value cache grows with context length in transformers please"
    title = title_from_text(long)
    assert title.endswith("…") and len(title) <= 48
    assert long.startswith(title[:-1])
    nospace = "x" * 100
    assert title_from_text(nospace) == "x" * 47 + "…"


def test_a_version_1_history_is_upgraded_and_searchable(db: Path) -> None:
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db, isolation_level=None)
    migrate(raw, target=1)
    raw.execute("INSERT INTO conversations (title, created, updated) VALUES ('Old', 1, 1)")
    raw.execute(
        "INSERT INTO messages (conversation_id, role, content, created)"
        " VALUES (1, 'assistant', 'an answer about sliding windows', 1)"
    )
    raw.close()
    with ChatStore(db) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert [h.conversation_id for h in s.search("sliding")] == [1]
        assert s.messages(1)[0].end_reason is None and s.get_conversation(1).settings == {}
