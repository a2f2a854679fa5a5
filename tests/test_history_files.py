"""Specification of conversation files: OpenAI message lists in and out, Markdown out."""

from __future__ import annotations

import json

import pytest

from engine.chat.history import HistoryError, from_openai, read_history, to_markdown, to_openai
from engine.chat.template import ChatMessage

TURNS = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello! ```py\nx = 1\n```"),
    ChatMessage("user", "Thanks"),
]


def test_json_round_trip_keeps_system_prompt_and_turns(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(to_openai("Be brief.", TURNS)))
    assert read_history(path) == ("Be brief.", TURNS)


def test_openai_content_parts_and_developer_role_are_read():
    system, turns = from_openai(
        {
            "messages": [
                {"role": "developer", "content": "Rules"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ]
        }
    )
    assert system == "Rules" and turns == [ChatMessage("user", "ab")]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{", "is not JSON"),
        ('{"a": 1}', "must be a JSON list"),
        ('[{"role": "tool", "content": "x"}]', "role 'tool'"),
        ('[{"role": "user", "content": [{"type": "image_url"}]}]', "only text content"),
        ('[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]', "must come before"),
    ],
)
def test_bad_history_files_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HistoryError) as err:
        read_history(path)
    assert fragment in str(err.value) and "bad.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_markdown_export_has_a_heading_per_turn():
    md = to_markdown("Greetings", "Be brief.", TURNS, model="SmolLM2")
    assert md.startswith("# Greetings") and "*Model: SmolLM2*" in md
    assert md.count("## You") == 2 and md.count("## Assistant") == 1 and "```py" in md
