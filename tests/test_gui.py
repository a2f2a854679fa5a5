"""The window, driven as a user would, with the real runtime child."""

from __future__ import annotations

import os
import signal

import pytest
from PySide6.QtCore import Qt

from app.main_window import MainWindow
from engine.storage.store import ChatStore
from tests.helpers.gui import LOAD_TIMEOUT_MS, ask, drop, new_window

pytestmark = pytest.mark.slow


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, smollm2_path):
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
    yield win
    win.close()
    win.store.close()


def test_first_start_loads_the_demo_model_and_chats(qtbot, window):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.start()
    assert "SmolLM2" in window.model_label.text()
    assert "context" in window.ctx_label.text()
    ask(qtbot, window, "What is the capital of France?")
    msgs = window.store.messages(window.chat.conversation_id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[1].content.strip() and msgs[1].complete
    assert "tokens/s" in window.speed_label.text()
    assert window.sidebar.conversations.count() == 1
    assert msgs[1].content.strip()[:10] in window.chat.view.toPlainText()


def test_dropping_a_gguf_loads_it_and_a_reply_appears(qtbot, window, gemma3_path):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        drop(window, str(gemma3_path))
    assert window.bridge.loaded_info.path == str(gemma3_path)
    assert "gemma" in window.model_label.text().lower()
    ask(qtbot, window, "Once upon a time")
    reply = window.store.messages(window.chat.conversation_id)[-1]
    assert reply.role == "assistant" and reply.content.strip()


def test_an_older_inspection_never_loads_over_a_newer_choice(qtbot, window, gemma3_path, smollm2_path):
    """Open A, then B: A's inspection answering after B was asked for must not load A."""
    from app.background import Worker

    window.open_model(str(gemma3_path))  # A
    [reading_a] = window.findChildren(Worker, "kvdeck-inspect")
    assert reading_a.wait(30)  # A has been read; its answer waits in the GUI thread's queue
    models_after_a: list[str | None] = []
    reading_a.finished.connect(lambda: models_after_a.append(window.model_info and window.model_info.path))
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS) as loaded:
        window.open_model(str(smollm2_path))  # B, the user's latest choice
    assert models_after_a == [None]  # A's answer changed nothing
    assert loaded.args[0].path == window.bridge.last_params.path == str(smollm2_path)
    assert not window.bridge.loading


def test_bad_drops_show_one_line_and_keep_the_conversation(qtbot, window, tmp_path):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.start()
    ask(qtbot, window, "Hello")
    before = window.store.messages(window.chat.conversation_id)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model")
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model either")
    for path, expected in (
        (str(text_file), "not a GGUF model"),
        (str(tmp_path / "missing.gguf"), "does not exist"),
        (str(fake), "fake.gguf"),
    ):
        window.banner.hide()
        drop(window, path)
        qtbot.waitUntil(window.banner.isVisible, timeout=10_000)
        message = window.banner.label.text()
        assert expected in message and "\n" not in message and "Traceback" not in message
    assert window.store.messages(window.chat.conversation_id) == before
    assert window.bridge.loaded_info is not None  # the loaded model is untouched
    window.chat.input.setPlainText("kept")
    assert window.isVisible()


def test_killing_the_runtime_mid_stream_keeps_window_and_history(qtbot, window):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.start()
    window.chat.max_tokens.setValue(2000)
    window.chat.input.setPlainText("Count from 1 to 500, one number per line.")
    with qtbot.waitSignal(window.bridge.delta, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(window.chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.wait(300)
    with qtbot.waitSignal(window.bridge.exited, timeout=30_000):
        os.kill(window.bridge.host.pid, signal.SIGKILL)
    assert window.isVisible()
    qtbot.waitUntil(window.banner.isVisible, timeout=5_000)
    assert "killed" in window.banner.label.text()
    msgs = window.store.messages(window.chat.conversation_id)
    assert msgs[0].content.startswith("Count from 1")
    assert msgs[1].role == "assistant" and not msgs[1].complete and msgs[1].content
    assert msgs[1].end_reason == "crash" and "the runtime stopped" in window.chat.view.toPlainText()
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.banner.action_button.click()  # "Restart runtime"
    window.chat.max_tokens.setValue(8)
    ask(qtbot, window, "Still there?")
    assert window.store.messages(window.chat.conversation_id)[-1].complete


def test_edit_regenerate_stop_and_history_across_restarts(qtbot, window, tmp_path):
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        window.start()
    ask(qtbot, window, "Hello there")
    conv = window.chat.conversation_id
    first_user = window.store.messages(conv)[0]
    # regenerate replaces the last reply (greedy: same text again)
    old_reply = window.store.messages(conv)[-1]
    with qtbot.waitSignal(window.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        window.chat.view.action.emit("regenerate", old_reply.id)
    msgs = window.store.messages(conv)
    assert len(msgs) == 2 and msgs[1].created > old_reply.created and msgs[1].content == old_reply.content
    # edit and resend replaces the user message and everything after it
    window.chat.view.action.emit("edit", first_user.id)
    assert window.chat.input.toPlainText() == "Hello there"
    ask(qtbot, window, "Good morning")
    msgs = window.store.messages(conv)
    assert [m.content for m in msgs if m.role == "user"] == ["Good morning"] and len(msgs) == 2
    # stop keeps what was generated so far
    window.chat.max_tokens.setValue(3000)
    window.chat.input.setPlainText("Count from 1 to 500.")
    with qtbot.waitSignal(window.bridge.delta, timeout=LOAD_TIMEOUT_MS):
        window.chat.send()
    assert window.chat.stop_button.isEnabled()
    with qtbot.waitSignal(window.bridge.finished, timeout=30_000) as blocker:
        qtbot.mouseClick(window.chat.stop_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0].stop_reason == "cancelled"
    stopped = window.store.messages(conv)[-1]
    assert stopped.content and stopped.complete
    # a new window on the same database shows the same conversation
    store2 = ChatStore(window.store.path)
    second = MainWindow(store2)
    qtbot.addWidget(second)
    assert second.chat.conversation_id == conv
    assert [m.content for m in store2.messages(conv)] == [m.content for m in window.store.messages(conv)]
    assert "Good morning" in second.chat.view.toPlainText()
    second.bridge.shutdown()
    store2.close()
