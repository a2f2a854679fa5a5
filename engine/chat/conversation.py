"""A conversation with a loaded model: prompt building and one-shot replies for GUI and CLI.

Knows nothing about windows or terminals; both front ends call :func:`conversation_prompt`
so a reply in the GUI and ``kvdeck chat`` see exactly the same prompt text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine import protocol as P
from engine.chat.template import ChatMessage, Prompt, build_prompt
from engine.core.errors import TemplateError
from engine.runtime.host import RuntimeHost
from engine.core.sampling import SamplingParams


def conversation_prompt(loaded: P.Loaded, system_prompt: str, turns: list[ChatMessage]) -> Prompt:
    """The prompt for the next reply, using the model's own template when it has one.

    Some templates (Gemma's, Mistral's) refuse a system role; then the system prompt is folded
    into the first user turn, which is what those models were trained to see.
    """
    template = loaded.chat_template or None
    system = [ChatMessage("system", system_prompt)] if system_prompt.strip() else []
    try:
        return build_prompt(template, system + turns, bos_token=loaded.bos_text,
                            eos_token=loaded.eos_text)
    except TemplateError:
        if not system or not turns or turns[0].role != "user":
            raise
    merged = [ChatMessage("user", f"{system_prompt.strip()}\n\n{turns[0].content}")] + turns[1:]
    return build_prompt(template, merged, bos_token=loaded.bos_text, eos_token=loaded.eos_text)


@dataclass(frozen=True)
class Reply:
    """A finished reply with the numbers the CLI prints and the GUI shows."""

    prompt: Prompt
    done: P.Done


def reply(host: RuntimeHost, loaded: P.Loaded, turns: list[ChatMessage], *, system_prompt: str = "",
          sampling: SamplingParams | None = None, max_tokens: int = 512,
          on_text: Callable[[str], None] | None = None, draft: str = "", draft_max: int = 8,
          json_schema: str = "") -> Reply:
    """Generate the next assistant turn, streaming text to ``on_text`` as it arrives.

    ``draft``: "" plain decoding, "model" (the draft loaded with ``host.load_draft``) or
    "lookup" (n-gram drafting); the reply is the same either way, only faster or slower."""
    prompt = conversation_prompt(loaded, system_prompt, turns)

    def on_event(msg: P.Message) -> None:
        if on_text is not None and isinstance(msg, P.Delta) and msg.text:
            on_text(msg.text)

    done = host.generate(prompt.text, max_tokens=max_tokens, sampling=sampling, on_event=on_event,
                         draft=draft, draft_max=draft_max, json_schema=json_schema)
    return Reply(prompt=prompt, done=done)
