"""``kvdeck chat --history FILE.json --overflow ...``: the CLI twin of the window's overflow policies."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import kvdeck

pytestmark = pytest.mark.slow


def long_history(path, n_turns: int = 12):
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(n_turns):
        msgs.append(
            {
                "role": "user",
                "content": f"Question {i}: tell me about the number {i} "
                "and why it matters in mathematics, history and culture.",
            }
        )
        msgs.append(
            {
                "role": "assistant",
                "content": f"The number {i} is interesting because "
                + "it appears in many places and has many properties. " * 4,
            }
        )
    msgs.append({"role": "user", "content": "And what about 13?"})
    path.write_text(json.dumps(msgs), encoding="utf-8")
    return path


def chat_512(model, history, *flags: str):
    """``kvdeck chat MODEL --history FILE`` in a 512-token context, answered as JSON."""
    return kvdeck("chat", str(model), "--history", str(history), "--n-ctx", "512", *flags, "--json")


def test_a_history_that_does_not_fit_rolls_and_says_what_was_left_out(smollm2_path, tmp_path):
    history = long_history(tmp_path / "h.json")
    r = chat_512(smollm2_path, history, "--max-tokens", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_messages"] == 25 and out["overflow"] == "rolling"
    assert out["dropped_messages"] > 0 and out["dropped_messages"] % 2 == 0  # whole exchanges
    assert out["dropped_tokens"] > 0
    assert out["n_prompt_tokens"] <= 512 - 8
    assert out["text"].strip()


def test_middle_keeps_the_first_exchange_and_a_fitting_history_drops_nothing(smollm2_path, tmp_path):
    history = long_history(tmp_path / "h.json")
    r = chat_512(smollm2_path, history, "--max-tokens", "4", "--temperature", "0", "--overflow", "middle")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dropped_messages"] > 0
    short = long_history(tmp_path / "short.json", n_turns=1)
    r = chat_512(smollm2_path, short, "--prompt", "Thanks!", "--max-tokens", "4", "--overflow", "stop")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dropped_messages"] == 0 and out["dropped_tokens"] == 0 and out["n_messages"] == 4


def test_stop_policy_with_a_history_that_does_not_fit_is_exit_2_with_one_line(smollm2_path, tmp_path):
    history = long_history(tmp_path / "h.json")
    r = chat_512(smollm2_path, history, "--max-tokens", "8", "--overflow", "stop")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "context" in lines[0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (
            '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]',
            "nothing to answer",
        ),
        ('{"not": "a list"}', "JSON list"),
    ],
)
def test_bad_histories_are_one_line(smollm2_path, tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    r = kvdeck("chat", str(smollm2_path), "--history", str(path), "--max-tokens", "4")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and fragment in r.stderr and len(r.stderr.splitlines()) == 1
