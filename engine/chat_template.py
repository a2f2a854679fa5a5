"""Turning a conversation into the prompt text the model was trained on.

Chat templates are Jinja2 programs shipped inside GGUF files downloaded from the internet, so
they run in Jinja2's immutable sandbox with a deadline and an output size limit: a template can
neither reach Python internals nor hang the app. A model without a template (a base model) gets a
completion mode that continues the conversation as plain text instead of replying with nothing.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, Iterable, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import TemplateError

Role = Literal["system", "user", "assistant"]

#: Rendering limits: templates are tiny programs; anything slower or bigger is hostile or broken.
RENDER_DEADLINE_S = 1.0
MAX_OUTPUT_CHARS = 4_000_000
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


class _Deadline:
    """Raises inside the template's own Python frames once the time is up.

    Jinja2 compiles a template to Python code, so a trace function sees every line it runs,
    including loops that call nothing (which the sandbox's call hooks would never see).
    """

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > self.end:
            raise TemplateError("the chat template took too long to render (over 1 s)")
        return self._trace

    def __enter__(self) -> "_Deadline":
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, minus the ability to build huge strings through ``*`` or ``~``."""

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Check sizes *before* computing: ``"x" * 10**12`` must never be attempted."""
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_OUTPUT_CHARS:
                        raise TemplateError("the chat template builds a string that is too large")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1024:
            raise TemplateError("the chat template computes an absurdly large number")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if len(left) + len(right) > MAX_OUTPUT_CHARS:
                raise TemplateError("the chat template builds a string that is too large")
        return super().call_binop(context, operator, left, right)

    intercepted_binops = frozenset(["*", "**", "+"])


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt)[:64])


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: Any = None, sort_keys: bool = False) -> str:
    """Like transformers' ``tojson``: no HTML escaping, which Jinja2's default would add."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError("the chat template is too large to be a real template")
    env = _LimitedEnvironment(
        trim_blocks=True, lstrip_blocks=True, autoescape=False, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
    try:
        with _Deadline(RENDER_DEADLINE_S):
            return env.from_string(source)
    except TemplateError:
        raise
    except Exception as exc:  # jinja2 raises many types for broken input
        raise TemplateError(f"the chat template is invalid: {exc}") from None


def render_chat(
    template: str,
    messages: Iterable[ChatMessage],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the model's own template, inside the sandbox and its limits."""
    compiled = _compile(template)
    payload = [{"role": m.role, "content": m.content} for m in messages]
    try:
        with _Deadline(RENDER_DEADLINE_S):
            chunks: list[str] = []
            size = 0
            for chunk in compiled.generate(
                messages=payload,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
                tools=None,
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
