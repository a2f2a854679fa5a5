"""Specification of the context overflow policies (engine.chat.overflow).

`measure` stands for "tokens of the whole prompt": here one token per word plus 3 per message of
template, so the arithmetic can be read; the runtime's real tokenizer is used by the chat tests.
"""

from __future__ import annotations

import pytest

from engine.chat.overflow import OverflowPolicy, fit_turns
from engine.chat.template import ChatMessage
from engine.core.errors import ContextFull

SYSTEM = 10  # the system prompt's tokens


def measure(turns) -> int:
    return SYSTEM + sum(3 + len(t.content.split()) for t in turns)


def conversation(n_turns: int, words: int = 20) -> list[ChatMessage]:
    out = []
    for i in range(n_turns):
        out.append(ChatMessage("user", f"question {i} " + "w " * words))
        out.append(ChatMessage("assistant", f"answer {i} " + "w " * words))
    out.append(ChatMessage("user", "the last question"))
    return out


def test_a_conversation_that_fits_is_sent_whole():
    turns = conversation(2)
    fitted = fit_turns(turns, measure, budget=1000)
    assert fitted.turns == tuple(turns) and not fitted.dropped and fitted.note == ""


def test_rolling_drops_the_oldest_turns_and_keeps_the_last_question():
    turns = conversation(12)
    fitted = fit_turns(turns, measure, budget=300, policy="rolling")
    assert fitted.prompt_tokens <= 300 and measure(fitted.turns) == fitted.prompt_tokens
    assert fitted.turns[-1].content == "the last question"
    assert fitted.turns[0].role == "user"  # the kept tail starts with a question
    assert fitted.dropped == tuple(range(fitted.cut))
    assert "earlier messages are outside the model's context" in fitted.note


def test_the_cut_moves_rarely_so_the_prompt_prefix_is_reused():
    """Turn after turn, the kept tail keeps starting at the same message until it must move,
    and then it moves far enough to leave room (slack) for several more turns."""
    turns = conversation(12)
    cut, moves = 0, 0
    for extra in range(8):
        turns += [
            ChatMessage("assistant", "answer " + "w " * 20),
            ChatMessage("user", f"follow-up {extra} " + "w " * 20),
        ]
        fitted = fit_turns(turns, measure, budget=300, previous_cut=cut)
        assert fitted.prompt_tokens <= 300
        moves += fitted.cut != cut
        cut = fitted.cut
    assert moves <= 4  # 8 new exchanges of 50 tokens in a 300-token budget: a move every 2+


def test_middle_keeps_the_first_exchange_and_the_newest_turns():
    turns = conversation(12)
    fitted = fit_turns(turns, measure, budget=300, policy=OverflowPolicy.MIDDLE)
    assert fitted.turns[:2] == tuple(turns[:2])
    assert fitted.turns[-1] == turns[-1]
    assert fitted.dropped[0] == 2 and fitted.prompt_tokens <= 300


def test_stop_refuses_in_one_sentence():
    with pytest.raises(ContextFull, match="tokens long but the context leaves"):
        fit_turns(conversation(12), measure, budget=300, policy="stop")


def test_a_last_message_too_long_for_the_context_is_refused_under_every_policy():
    turns = conversation(2) + [ChatMessage("assistant", "ok"), ChatMessage("user", "w " * 500)]
    for policy in OverflowPolicy:
        with pytest.raises(ContextFull):
            fit_turns(turns, measure, budget=300, policy=policy)


def test_measure_is_called_a_logarithmic_number_of_times():
    calls = []
    turns = conversation(200)
    fit_turns(turns, lambda t: calls.append(1) or measure(t), budget=300)
    assert len(calls) <= 2 + 2 * 9  # total + two binary searches over ~200 cut points
