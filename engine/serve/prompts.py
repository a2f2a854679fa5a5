"""The prompt text (and the JSON schema that constrains the reply) for one API request.

Chat requests go through the model's own template (engine.chat), with tools when the request
has them (engine.serve.tools says when a template "renders tools"). With ``--overflow`` a chat
that does not fit a sequence is cut by engine.chat.overflow's policy, measuring the rendered
prompt with the model's own tokenizer; without it the child refuses such a prompt and the
client gets OpenAI's 400 ``context_length_exceeded``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import protocol as P
from engine.chat.template import ChatMessage, render_chat
from engine.core.errors import ContextFull, KvDeckError, TemplateError
from engine.serve.openai_api import ApiError, Job, split_system
from engine.serve.tools import Tools, call_schema, generic_system, message_dicts

Measure = Callable[[str], int]


@dataclass(frozen=True)
class Built:
    prompt: str
    json_schema: str = ""
    native_tools: bool = False


def build(loaded: P.Loaded, job: Job, *, overflow: str = "", measure: Measure | None = None) -> Built:
    """Runs in a worker thread (templates and tokenizing may take milliseconds)."""
    if job.kind == "completion":
        return Built(job.prompt, job.json_schema)
    if job.tools is not None or any(m.get("tool_calls") or m["role"] == "tool" for m in job.raw_messages):
        return _with_tools(loaded, job)
    from engine.chat.conversation import conversation_prompt

    system, turns = split_system(job.messages)
    try:
        if overflow and measure is not None:
            turns = _fit(loaded, job, system, turns, overflow, measure)
        return Built(conversation_prompt(loaded, system, turns).text, job.json_schema)
    except TemplateError as exc:
        raise ApiError(400, str(exc), param="messages", code="template_error") from None


def _fit(
    loaded: P.Loaded, job: Job, system: str, turns: list[ChatMessage], policy: str, measure: Measure
) -> list[ChatMessage]:
    from engine.chat.conversation import conversation_prompt
    from engine.chat.overflow import fit_turns

    reserve = job.max_tokens or max(16, loaded.n_ctx_seq // 4)
    budget = max(1, loaded.n_ctx_seq - min(reserve, loaded.n_ctx_seq // 2))

    def tokens(kept: Sequence[ChatMessage]) -> int:
        return measure(conversation_prompt(loaded, system, list(kept)).text)

    try:
        return list(fit_turns(turns, tokens, budget, policy).turns)
    except ContextFull as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    except KvDeckError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def _render(loaded: P.Loaded, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    return render_chat(
        loaded.chat_template, messages, bos_token=loaded.bos_text, eos_token=loaded.eos_text, tools=tools
    )


def _with_tools(loaded: P.Loaded, job: Job) -> Built:
    tools: Tools | None = job.tools
    if not loaded.chat_template.strip():
        raise ApiError(
            400,
            "tools are not supported for this model: it has no chat template",
            param="tools",
            code="tools_not_supported",
        )
    raw = list(job.raw_messages)
    schema = json.dumps(call_schema(tools)) if tools is not None and tools.forced else ""
    try:  # the template's own tool support
        text = _render(loaded, message_dicts(raw, native=True), tools.openai_list() if tools else None)
        if tools is None or all(name in text for name in tools.names):
            return Built(text, schema, native_tools=True)
    except TemplateError:
        pass
    if tools is not None and not tools.forced:
        raise ApiError(
            400,
            'tools are not supported for this model with tool_choice "auto": its chat '
            "template does not render tools, so it was never taught when to call one. "
            'Send tool_choice "required" or a named function: KV Deck then describes '
            "the tools itself and constrains the reply to a valid call.",
            param="tool_choice",
            code="tools_not_supported",
        )
    msgs = message_dicts(raw, native=False)
    if tools is not None:
        sys_text = generic_system(tools)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + sys_text}
        else:
            msgs.insert(0, {"role": "system", "content": sys_text})
    try:
        return Built(_render(loaded, msgs, None), schema)
    except TemplateError:
        pass
    if msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "user":
        merged = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}] + msgs[2:]
        try:
            return Built(_render(loaded, merged, None), schema)
        except TemplateError as exc:
            raise ApiError(400, str(exc), param="messages", code="template_error") from None
    raise ApiError(
        400, "the chat template cannot render these messages", param="messages", code="template_error"
    )
