"""OpenAI request and response shapes for the API server (engine.serve.server): parsing, limits, errors.

Kept apart from the HTTP layer so every rule about what a client may send can be read (and
tested) in one place. Requests are checked field by field and refused with a 400 that names the
field, in OpenAI's error shape, because the clients people point at us (the official SDKs,
editors, agents) show exactly that message to the user.

Defaults: a field the client leaves out takes KV Deck's default preset (what the GUI and
``kvdeck chat`` use), so the same prompt and settings give the same reply on every front end;
``temperature: 0`` is greedy and equals ``kvdeck chat --temperature 0``.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from engine.chat.template import ChatMessage
from engine.core.sampling import RANDOM_SEED, SamplingParams

MAX_BODY_BYTES = 1 << 20
MAX_STOPS = 4
MAX_STOP_CHARS = 256
#: How a reply ended in the child (engine.child.batch) → OpenAI's finish_reason.
FINISH = {"eog": "stop", "stop": "stop", "length": "length", "context": "length"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "suffix",
                "audio", "prediction")


class ApiError(Exception):
    """A refusal with its HTTP status, in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class Job:
    """One parsed request: what to generate and how, before the prompt is built."""

    kind: str  # chat | completion
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    max_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _number(body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ApiError(400, f"{key} must be {'an integer' if integer else 'a number'}", param=key)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        low = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        high = "" if hi >= 1 << 20 else f" and at most {hi:g}"
        raise ApiError(400, f"{key} must be {low}{high}, not {value}", param=key)
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return value


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """Model, sampling, limits and stop strings: the fields both endpoints share."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (GET /v1/models lists it)", param="model")
    for key in _UNSUPPORTED:
        if body.get(key):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    if body.get("logprobs") or body.get("top_logprobs") or body.get("echo"):
        raise ApiError(400, "logprobs and echo are not supported by this server", param="logprobs")
    for key in ("n", "best_of"):
        if body.get(key) is not None and (isinstance(body[key], bool) or body[key] != 1):
            raise ApiError(400, f"{key} must be 1 (one choice per request)", param=key)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        raise ApiError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format")
    limit = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = _number(body, key, 1, 1 << 30, integer=True)
        if value is not None:
            limit = int(value)
    base = SamplingParams().to_dict()
    for key, lo, hi, integer, lo_open in (
            ("temperature", 0, 5, False, False), ("top_p", 0, 1, False, True),
            ("top_k", 0, 1 << 20, True, False), ("min_p", 0, 0.999999, False, False),
            ("repeat_penalty", 0.5, 3, False, False), ("repeat_last_n", 0, 1 << 20, True, False)):
        value = _number(body, key, lo, hi, integer=integer, lo_open=lo_open)
        if value is not None:
            base[key] = value
    seed = _number(body, "seed", -(1 << 63), (1 << 64) - 1, integer=True)
    base["seed"] = RANDOM_SEED if seed is None else int(seed) % RANDOM_SEED  # 0xFFFFFFFF = random
    for key in ("frequency_penalty", "presence_penalty"):
        value = _number(body, key, -2, 2)
        if value:
            base[key] = float(value)
    return {"model": model, "max_tokens": limit, "sampling": base, "stop": _stops(body.get("stop")),
            "stream": _flag(body, "stream"), "include_usage": _include_usage(body)}


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} "
                            "characters", param="stop")
    return tuple(s for s in stops if s)


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return _flag(opts, "include_usage")


def _content(message: dict[str, Any], i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported",
                               param=f"messages.{i}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                   param=f"messages.{i}.content")


def parse_chat(body: dict[str, Any]) -> Job:
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise ApiError(400, f"messages[{i}].role must be system, developer, user or assistant",
                           param=f"messages.{i}.role")
        out.append(ChatMessage(_ROLES[role], _content(message, i)))  # type: ignore[arg-type]
    return Job(kind="chat", messages=tuple(out), **common)


def parse_completion(body: dict[str, Any]) -> Job:
    common = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
    return Job(kind="completion", prompt=prompt, **common)


def split_system(messages: tuple[ChatMessage, ...]) -> tuple[str, list[ChatMessage]]:
    """Leading system messages become the system prompt (the GUI's shape), the rest turns."""
    n = 0
    while n < len(messages) and messages[n].role == "system":
        n += 1
    return "\n\n".join(m.content for m in messages[:n]), list(messages[n:])


# ----------------------------------------------------------------------------- responses
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


def response(job: Job, rid: str, model: str, text: str, finish: str, n_prompt: int,
             n_completion: int) -> dict[str, Any]:
    if job.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(n_prompt, n_completion)}


def chunk(job: Job, rid: str, model: str, text: str | None, finish: str | None = None,
          *, first: bool = False, usage_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """One server-sent event; ``usage_counts`` makes the extra final chunk with no choices."""
    if job.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choices: list[dict[str, Any]] = [{"index": 0, "delta": delta, "finish_reason": finish,
                                          "logprobs": None}]
        obj = "chat.completion.chunk"
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
        obj = "text_completion"
    out: dict[str, Any] = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
                           "choices": [] if usage_counts is not None else choices}
    if usage_counts is not None:
        out["usage"] = usage_counts
    return out
