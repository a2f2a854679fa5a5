"""Replies end with a reason, conversations can be found, renamed, moved and undeleted, and the
chat settings are in view: the window with the real runtime child (SmolLM2, greedy)."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QGuiApplication

from app.chat import conversation_files
from engine.chat.history import read_history
from engine.storage.store import ChatStore
from tests.helpers.gui import LOAD_TIMEOUT_MS, ask, loaded_window, new_window

pytestmark = pytest.mark.slow


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, smollm2_path):
    with loaded_window(qtbot, tmp_path, monkeypatch, smollm2_path) as win:
        yield win


def _stream_then(qtbot, win, action) -> None:
    """Start a long reply, wait for its first text (never "(incomplete)" while it streams), act."""
    win.chat.max_tokens.setValue(3000)
    win.chat.input.setPlainText("Count from 1 to 500, one number per line.")
    with qtbot.waitSignal(win.bridge.delta, timeout=LOAD_TIMEOUT_MS):
        win.chat.send()
    qtbot.waitUntil(lambda: "writing…" in win.chat.view.toPlainText(), timeout=LOAD_TIMEOUT_MS)
    assert "(incomplete)" not in win.chat.view.toPlainText()
    action()


def test_each_reply_end_reason_is_stored_and_shown(qtbot, window):
    window.chat.max_tokens.setValue(4)
    ask(qtbot, window, "Tell me a long story about a dragon.")
    last = window.store.messages(window.chat.conversation_id)[-1]
    assert (
        last.end_reason == "length" and "reached the maximum reply length" in window.chat.view.toPlainText()
    )

    with qtbot.waitSignal(window.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        _stream_then(
            qtbot, window, lambda: qtbot.mouseClick(window.chat.stop_button, Qt.MouseButton.LeftButton)
        )
    last = window.store.messages(window.chat.conversation_id)[-1]
    assert last.end_reason == "stop" and last.content and last.complete
    assert "stopped by you" in window.chat.view.toPlainText()
    assert "(incomplete)" not in window.chat.view.toPlainText()

    with qtbot.waitSignal(window.bridge.generationFailed, timeout=LOAD_TIMEOUT_MS):
        _stream_then(qtbot, window, window.bridge.kill_runtime)
    last = window.store.messages(window.chat.conversation_id)[-1]
    assert last.end_reason == "crash" and last.content
    assert "the runtime stopped" in window.chat.view.toPlainText()


def test_a_reply_that_fills_the_context_says_so_and_offers_a_larger_one(qtbot, window, tmp_path):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.models.apply(window.settings.replace(n_ctx=256))
    window.chat.max_tokens.setValue(2000)  # more than the context holds: it fills up first
    window.chat.input.setPlainText("Write a very long essay about the history of Rome.")
    with qtbot.waitSignal(window.bridge.finished, timeout=4 * LOAD_TIMEOUT_MS):
        window.chat.send()
    last = window.store.messages(window.chat.conversation_id)[-1]
    assert last.end_reason == "context"
    assert "the context is full" in window.chat.view.toPlainText()
    assert window.chat.notice.isVisible() and window.chat.notice.larger_button.isVisible()


def test_an_empty_incomplete_reply_from_an_older_version_is_not_shown(
    qtbot, tmp_path, monkeypatch, smollm2_path
):
    store = ChatStore(tmp_path / "chat.sqlite3")
    conv = store.create_conversation("old")
    store.add_message(conv.id, "user", "hello")
    store.add_message(conv.id, "assistant", "", complete=False)
    store.close()
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
    try:
        assert [m.role for m in win.store.messages(conv.id)] == ["user"]
        assert "Assistant" not in win.chat.view.toPlainText()
    finally:
        win.close()
        win.store.close()


def test_export_import_round_trip_search_rename_and_undo(qtbot, window, tmp_path):
    window.chat.system_edit.setPlainText("Answer in English.\nBe brief.")
    ask(qtbot, window, "Name a colour of the sky.")
    ask(qtbot, window, "And of grass?")
    conv = window.chat.conversation_id
    reply = window.store.messages(conv)[1].content
    path = tmp_path / "out.json"
    conversation_files.export(window.store, conv, path, "json")
    system, turns = read_history(path)
    assert system == "Answer in English.\nBe brief."
    assert [t.content for t in turns] == [m.content for m in window.store.messages(conv)]
    conversation_files.export(window.store, conv, tmp_path / "out.md", "md")
    assert "## Assistant" in (tmp_path / "out.md").read_text(encoding="utf-8")
    copy = window.sidebar.import_conversation(str(path))
    assert copy != conv and window.chat.conversation_id == copy
    assert [(m.role, m.content) for m in window.store.messages(copy)] == [
        (m.role, m.content) for m in window.store.messages(conv)
    ]
    assert window.store.get_conversation(copy).system_prompt == system
    assert json.loads(path.read_text(encoding="utf-8"))["title"] == window.store.get_conversation(copy).title

    # search finds a word of an old reply; another conversation without it is left out
    window.chat.new_conversation()
    ask(qtbot, window, "Say OK.")
    word = max(reply.split(), key=len).strip(".,!?*")
    window.sidebar.focus_search()
    window.sidebar.search_edit.setText(word)
    found = {
        window.sidebar.conversations.item(i).data(Qt.ItemDataRole.UserRole)
        for i in range(window.sidebar.conversations.count())
    }
    assert conv in found and window.chat.conversation_id not in found
    window.sidebar.search_edit.clear()

    # rename in place, delete, undo
    item = next(
        window.sidebar.conversations.item(i)
        for i in range(window.sidebar.conversations.count())
        if window.sidebar.conversations.item(i).data(Qt.ItemDataRole.UserRole) == conv
    )
    window.sidebar.conversations.setCurrentItem(item)
    item.setText("Colours")
    assert window.store.get_conversation(conv).title == "Colours"
    window.sidebar.delete_current()
    assert window.store.get_conversation(conv) is None
    assert window.banner.isVisible() and window.banner.action_button.text() == "Undo"
    qtbot.mouseClick(window.banner.action_button, Qt.MouseButton.LeftButton)
    assert window.store.get_conversation(conv).title == "Colours"
    assert window.chat.conversation_id == conv


def test_code_blocks_copy_and_every_copy_says_copied(qtbot, window, tmp_path):
    path = tmp_path / "code.json"
    path.write_text(
        json.dumps(
            [
                {"role": "user", "content": "code?"},
                {
                    "role": "assistant",
                    "content": "Here:\n\n```python\nprint(1)\n```\n\nand\n\n```\nls -l\n```",
                },
            ]
        ),
        encoding="utf-8",
    )
    conv = window.sidebar.import_conversation(str(path))
    reply = window.store.messages(conv)[-1]
    assert window.chat.view.toPlainText().count("copy code") == 2
    window.chat.view.anchorClicked.emit(QUrl(f"kvdeck:code/{reply.id}-1"))
    assert QGuiApplication.clipboard().text() == "ls -l"
    assert window.statusBar().currentMessage() == "Copied"
    window.statusBar().clearMessage()
    window.chat.view.anchorClicked.emit(QUrl(f"kvdeck:copy/{reply.id}"))
    assert QGuiApplication.clipboard().text() == reply.content
    assert window.statusBar().currentMessage() == "Copied"


def test_a_long_transcript_opens_at_the_bottom(qtbot, window, tmp_path):
    msgs = [{"role": r, "content": f"{r} line {i}\n" * 6} for i in range(20) for r in ("user", "assistant")]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(msgs), encoding="utf-8")
    window.sidebar.import_conversation(str(path))
    bar = window.chat.view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=5000)


def test_sampling_is_visible_and_kept_per_conversation_with_model_defaults(qtbot, window):
    s = window.chat.settings
    assert "temperature" in s.summary.text() and "overflow: rolling" in s.summary.text()
    qtbot.mouseClick(s.toggle, Qt.MouseButton.LeftButton)
    assert s.temperature.isVisible() and s.seed.isVisible() and s.system_edit.isVisible()
    s.preset_box.setCurrentText("Creative")
    assert s.temperature.value() == 1.0
    s.temperature.setValue(0.3)
    assert s.preset_box.currentText() == "Custom"
    s.seed.setValue(42)
    ask(qtbot, window, "Hi")
    first = window.chat.conversation_id
    stored = window.store.get_conversation(first).settings
    assert stored["sampling"]["temperature"] == pytest.approx(0.3) and stored["sampling"]["seed"] == 42
    window.chat.new_conversation()
    assert s.temperature.value() == pytest.approx(0.3)  # the model's defaults: the last values used
    s.temperature.setValue(0.9)
    ask(qtbot, window, "Hello")
    window.chat.open_conversation(first)
    assert s.temperature.value() == pytest.approx(0.3) and s.seed.value() == 42
    assert "Model: SmolLM2" in window.chat.model_label.text()


def test_a_base_model_asks_to_continue_the_text(qtbot, window, gemma3_path):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.open_model(str(gemma3_path))
    assert window.chat.input.placeholderText().startswith("Continue the text")
