"""Turning a conversation into the prompt text the model was trained on.

Chat templates are Jinja2 programs shipped inside GGUF files downloaded from the internet, so
they run in Jinja2's immutable sandbox with time, memory and size limits (engine.chat.sandbox):
a template can neither reach Python internals nor hang the app nor exhaust its memory. A model without a template (a base model) gets a
completion mode that continues the conversation as plain text instead of replying with nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import jinja2

from engine.chat.sandbox import MAX_OUTPUT_CHARS, RENDER_DEADLINE_S, Deadline, LimitedEnvironment
from engine.core.errors import TemplateError

Role = Literal["system", "user", "assistant"]

MAX_TEMPLATE_CHARS = 200_000


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class Prompt:
    """The text to feed the model and how it was made (shown in the GUI and the CLI JSON)."""

    text: str
    mode: Literal["chat", "completion"]


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt)[:64])


def _tojson(
    value: Any,
    indent: int | None = None,
    ensure_ascii: bool = False,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """Like transformers' ``tojson``: no HTML escaping, which Jinja2's default would add."""
    return json.dumps(
        value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError("the chat template is too large to be a real template")
    env = LimitedEnvironment(
        trim_blocks=True, lstrip_blocks=True, autoescape=False, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
    try:
        with Deadline(RENDER_DEADLINE_S):
            return env.from_string(source)
    except TemplateError:
        raise
    except Exception as exc:  # jinja2 raises many types for broken input
        raise TemplateError(f"the chat template is invalid: {exc}") from None


def render_chat(
    template: str,
    messages: Iterable[ChatMessage | dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``messages`` with the model's own template, inside the sandbox and its limits.

    ``tools`` (OpenAI's list of function tools) and message dicts (with ``tool_calls``, role
    ``tool``) are for the API server's tool calls: templates that support tools read both.
    """
    compiled = _compile(template)
    payload = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
    try:
        with Deadline(RENDER_DEADLINE_S):
            chunks: list[str] = []
            size = 0
            for chunk in compiled.generate(
                messages=payload,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                documents=None,
            ):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateError("the chat template produced too much text")
                chunks.append(chunk)
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateError("the chat template recursed too deeply") from None
    except Exception as exc:
        raise TemplateError(f"the chat template failed: {exc}") from None
    return "".join(chunks)


def render_completion(messages: Iterable[ChatMessage]) -> str:
    """Continue the conversation as one plain document, for models without a chat template.

    A base model has never seen turn markers, so the most useful thing it can do is continue
    the text: the system prompt (if any) as a preamble, then each turn's text in order.
    """
    return "\n\n".join(m.content.strip("\n") for m in messages if m.content.strip())


def build_prompt(
    template: str | None,
    messages: list[ChatMessage],
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> Prompt:
    """The prompt for the next assistant turn: chat mode with a template, completion without."""
    if template and template.strip():
        text = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)
        return Prompt(text=text, mode="chat")
    return Prompt(text=render_completion(messages), mode="completion")
