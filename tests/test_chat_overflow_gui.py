"""A chat that never dead-ends: a long conversation in a 512-token context, under each overflow
policy, with the real runtime child (SmolLM2, greedy)."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt

from app.main_window import MainWindow
from engine.plan.analytic import analytic_plan
from engine.plan.fit import fit
from tests.helpers.gui import LOAD_TIMEOUT_MS, ask, loaded_window

pytestmark = pytest.mark.slow
N_CTX = 512


@pytest.fixture
def small(qtbot, tmp_path, monkeypatch, smollm2_path):
    """The window with SmolLM2 loaded in a 512-token context."""
    with loaded_window(qtbot, tmp_path, monkeypatch, smollm2_path, max_tokens=16) as win:
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.models.apply(win.settings.replace(n_ctx=N_CTX))
        assert win.bridge.loaded_info.n_ctx == N_CTX
        yield win


def import_long(win: MainWindow, tmp_path, n_turns: int = 12) -> int:
    """A 12-exchange conversation (about 1,000 tokens) imported through the sidebar."""
    msgs = []
    for i in range(n_turns):
        msgs.append(
            {
                "role": "user",
                "content": f"Question {i}: tell me about the number {i} and "
                "why it matters in mathematics, history and culture.",
            }
        )
        msgs.append(
            {
                "role": "assistant",
                "content": f"The number {i} is interesting because "
                + "it appears in many places and has many properties. " * 4,
            }
        )
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"title": "Numbers", "messages": msgs}), encoding="utf-8")
    conv_id = win.sidebar.import_conversation(str(path))
    assert conv_id is not None and win.chat.conversation_id == conv_id
    return conv_id


def ask_past_the_context(qtbot, win: MainWindow, tmp_path) -> int:
    """The long conversation under "stop and ask" and one more question: the notice is up."""
    conv = import_long(win, tmp_path)
    win.chat.settings.set_policy("stop")
    win.chat.input.setPlainText("And what about 13?")
    win.chat.send()
    qtbot.waitUntil(win.chat.notice.isVisible, timeout=LOAD_TIMEOUT_MS)
    return conv


@pytest.mark.parametrize("policy", ["rolling", "middle"])
def test_a_long_conversation_continues_and_the_transcript_says_what_was_left_out(
    qtbot, small, tmp_path, policy
):
    conv = import_long(small, tmp_path)
    small.chat.settings.set_policy(policy)
    ask(qtbot, small, "And what about 13?")
    msgs = small.store.messages(conv)
    assert len(msgs) == 26 and msgs[-1].role == "assistant" and msgs[-1].content.strip()
    settings = small.store.get_conversation(conv).settings
    assert settings["overflow"] == policy
    dropped = settings["dropped_ids"]
    assert dropped and len(dropped) % 2 == 0  # whole exchanges, still in the database
    assert set(dropped) <= {m.id for m in msgs}
    if policy == "middle":
        assert msgs[0].id not in dropped and msgs[1].id not in dropped  # the first exchange stays
    else:
        assert msgs[0].id in dropped
    text = small.chat.view.toPlainText()
    assert f"{len(dropped)} earlier messages are outside the model's context" in text
    assert "Question 0" in text  # shown, dimmed, not deleted
    done = small.chat.prefill[msgs[-1].id]
    assert done[0] <= N_CTX


def test_stop_and_ask_offers_every_way_on_and_never_leaves_an_empty_bubble(qtbot, small, tmp_path):
    conv = import_long(small, tmp_path)
    small.chat.settings.set_policy("stop")
    small.chat.input.setPlainText("And what about 13?")
    qtbot.mouseClick(small.chat.send_button, Qt.MouseButton.LeftButton)
    notice = small.chat.notice
    qtbot.waitUntil(notice.isVisible, timeout=LOAD_TIMEOUT_MS)
    assert "does not fit the context" in notice.label.text()
    assert (
        notice.larger_button.isVisible() and notice.new_button.isVisible() and notice.drop_button.isVisible()
    )
    msgs = small.store.messages(conv)
    assert msgs[-1].role == "user"  # no assistant message, empty or not
    assert small.chat.send_button.isEnabled() and not small.bridge.generating
    with qtbot.waitSignal(small.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(notice.drop_button, Qt.MouseButton.LeftButton)
    assert small.chat.settings.policy == "rolling"
    assert small.store.get_conversation(conv).settings["overflow"] == "rolling"
    assert small.store.messages(conv)[-1].role == "assistant"
    assert "outside the model's context" in small.chat.view.toPlainText()


def test_stop_and_ask_can_start_a_new_chat_with_the_waiting_message(qtbot, small, tmp_path):
    conv = ask_past_the_context(qtbot, small, tmp_path)
    qtbot.mouseClick(small.chat.notice.new_button, Qt.MouseButton.LeftButton)
    assert small.chat.conversation_id is None
    assert small.chat.input.toPlainText() == "And what about 13?"
    assert small.store.get_conversation(conv) is not None


def test_use_a_larger_context_reloads_with_the_fitted_context_and_answers(qtbot, small, tmp_path):
    conv = ask_past_the_context(qtbot, small, tmp_path)
    expected = fit(
        small.model_info,
        small.settings,
        small.memory.devices()[0],
        plan_fn=analytic_plan,
        min_context=N_CTX + 1,
    ).settings.n_ctx
    assert expected > N_CTX
    with qtbot.waitSignal(small.bridge.finished, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(small.chat.notice.larger_button, Qt.MouseButton.LeftButton)
    assert small.bridge.loaded_info.n_ctx == expected
    msgs = small.store.messages(conv)
    assert msgs[-1].role == "assistant" and msgs[-1].content.strip()
    assert not small.store.get_conversation(conv).settings.get("dropped_ids")  # all of it fits now


def test_the_prefix_cache_is_reused_across_a_sliding_window(qtbot, small):
    """Twelve real turns in 512 tokens: the window slides, yet most turns prefill only the new
    part, because the cut moves rarely (engine.chat.overflow) and is stored per conversation."""
    small.chat.max_tokens.setValue(24)
    filler = "Please answer briefly, in one short sentence, and be precise about it. "
    for i in range(12):
        ask(qtbot, small, f"Turn {i}: what is {i} plus {i}? {filler}")
    conv = small.chat.conversation_id
    replies = [m for m in small.store.messages(conv) if m.role == "assistant"]
    counts = [small.chat.prefill[m.id] for m in replies]
    prefilled = [n_prompt - n_reused for n_prompt, n_reused in counts]
    print("prefill per turn (prompt, reused, prefilled):", [(p, r, p - r) for p, r in counts])
    assert small.store.get_conversation(conv).settings.get("dropped_ids"), "the window never slid"
    new_part = 24 + 60  # the last reply and the new question, with their template tokens
    cheap = [n for n in prefilled[1:] if n <= new_part]
    assert len(cheap) >= 8, prefilled  # most turns; the few where the cut moved prefill it all
    assert sum(prefilled) < 0.5 * sum(p for p, _ in counts)
