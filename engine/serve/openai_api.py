"""OpenAI request shapes for the API server (engine.serve.server): parsing, limits, errors.

Kept apart from the HTTP layer so every rule about what a client may send can be read (and
tested) in one place. Requests are checked field by field and refused with a 400 that names the
field, in OpenAI's error shape, because the clients people point at us (the official SDKs,
editors, agents) show exactly that message to the user.

Structured output (``response_format``), log-probabilities and ``n`` are parsed here and
carried in :class:`Job`; tools are checked by engine.serve.tools. The ``model`` field must be a
string but may name anything: OpenAI clients send their own model names, and this server has
exactly one model, so every name is answered by it (the replies name the loaded model).

Defaults: a field the client leaves out takes llama-server's default
(``engine.core.sampling.API_DEFAULTS``: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no
repeat penalty), so a client gets what it would get from llama.cpp's own server, and a request
that names every sampling field gets the same reply as ``kvdeck chat`` with those settings.
Where the GGUF recommends sampling (``general.sampling.*``, engine.gguf.sampling_meta), those
values come first, as llama-server's ``common_init_sampler_from_model`` makes them its defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from engine import protocol as P
from engine.chat.history import text_of
from engine.chat.template import ChatMessage
from engine.core.sampling import API_DEFAULTS, RANDOM_SEED, SamplingParams
from engine.gguf.inspect import recommended_sampling_of
from engine.serve.errors import ApiError, error_body  # noqa: F401  (re-exported)
from engine.serve.tools import parse_tools

MAX_BODY_BYTES = 1 << 20
MAX_STOPS = 4
MAX_STOP_CHARS = 256
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_UNSUPPORTED = ("logit_bias", "suffix", "audio", "prediction")
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_SCHEMA_CHARS = 100_000


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
    #: llama-server's ``timings_per_token``: every streamed chunk says how many tokens came so far.
    timings_per_token: bool = False
    n: int = 1
    logprobs: int = -1  # -1 none, else how many alternatives per token (top_logprobs)
    json_schema: str = ""  # response_format's schema as JSON text (converted in the child)
    tools: Any = None  # engine.serve.tools.Tools, or None
    #: The messages as dicts (tool calls, tool results) for templates that render tools.
    raw_messages: tuple[dict[str, Any], ...] = ()


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _number(
    body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False
) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
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


def request_defaults(loaded: P.Loaded | None) -> SamplingParams:
    """What a request's missing sampling fields take for the loaded model: llama-server's
    defaults, with the model's own recommendations in front."""
    recommended = recommended_sampling_of(loaded.path if loaded else None)
    return dataclasses.replace(API_DEFAULTS, **recommended) if recommended else API_DEFAULTS  # type: ignore[arg-type]


def _common(body: dict[str, Any], defaults: SamplingParams) -> dict[str, Any]:
    """Model, sampling, limits and stop strings: the fields both endpoints share; sampling fields
    the body leaves out come from ``defaults`` (:func:`request_defaults`)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (GET /v1/models lists it)", param="model")
    for key in _UNSUPPORTED:
        if body.get(key):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    if body.get("echo"):
        raise ApiError(400, "echo is not supported by this server", param="echo")
    n = int(_number(body, "n", 1, MAX_N, integer=True) or 1)
    if body.get("best_of") is not None and (isinstance(body["best_of"], bool) or body["best_of"] != n):
        raise ApiError(400, "best_of must equal n (choices are not ranked here)", param="best_of")
    limit = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = _number(body, key, 1, 1 << 30, integer=True)
        if value is not None:
            limit = int(value)
    base = defaults.to_dict()
    for key, lo, hi, integer, lo_open in (
        ("temperature", 0, 5, False, False),
        ("top_p", 0, 1, False, True),
        ("top_k", 0, 1 << 20, True, False),
        ("min_p", 0, 0.999999, False, False),
        ("repeat_penalty", 0.5, 3, False, False),
        ("repeat_last_n", 0, 1 << 20, True, False),
    ):
        value = _number(body, key, lo, hi, integer=integer, lo_open=lo_open)
        if value is not None:
            base[key] = value
    seed = _number(body, "seed", -(1 << 63), (1 << 64) - 1, integer=True)
    base["seed"] = RANDOM_SEED if seed is None else int(seed) % RANDOM_SEED  # 0xFFFFFFFF = random
    for key in ("frequency_penalty", "presence_penalty"):
        value = _number(body, key, -2, 2)
        if value:
            base[key] = float(value)
    return {
        "model": model,
        "max_tokens": limit,
        "sampling": base,
        "stop": _stops(body.get("stop")),
        "stream": _flag(body, "stream"),
        "include_usage": _include_usage(body),
        "timings_per_token": _flag(body, "timings_per_token"),
        "n": n,
        "json_schema": _response_format(body.get("response_format")),
    }


def _response_format(fmt: Any) -> str:
    """response_format → the JSON schema (as text) the reply must match; '' for plain text."""
    if fmt is None:
        return ""
    kind = fmt.get("type", "text") if isinstance(fmt, dict) else None
    if kind == "text":
        return ""
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
            raise ApiError(
                400,
                "response_format.json_schema must be an object with a name and a schema",
                param="response_format.json_schema",
            )
        if schema is None:
            schema = {}
        if not isinstance(schema, dict):
            raise ApiError(
                400,
                "response_format.json_schema.schema must be a JSON schema object",
                param="response_format.json_schema.schema",
            )
        _check_schema(schema, "response_format.json_schema.schema")
        text = json.dumps(schema)
        if len(text) > MAX_SCHEMA_CHARS:
            raise ApiError(
                400,
                f"the JSON schema is larger than {MAX_SCHEMA_CHARS} characters",
                param="response_format.json_schema.schema",
            )
        return text
    raise ApiError(
        400, "response_format.type must be text, json_object or json_schema", param="response_format"
    )


_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def _check_schema(schema: Any, param: str, depth: int = 0) -> None:
    """The structural mistakes the grammar converter would not catch in words: unknown types,
    non-object subschemas, non-list enums. Deeper semantics are the converter's (in the child)."""
    if depth > 64:
        raise ApiError(400, "the JSON schema is nested too deeply", param=param)
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ApiError(400, f"a JSON schema must be an object, not {type(schema).__name__}", param=param)
    kind = schema.get("type")
    for k in (
        [kind]
        if isinstance(kind, str)
        else kind
        if isinstance(kind, list)
        else []
        if kind is None
        else [None]
    ):
        if k not in _TYPES:
            raise ApiError(400, f"the JSON schema has an unknown type {k!r}", param=param)
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ApiError(400, "a JSON schema enum must be a non-empty list", param=param)
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        sub = schema.get(key)
        if sub is not None:
            if not isinstance(sub, dict):
                raise ApiError(400, f"a JSON schema's {key} must be an object", param=param)
            for value in sub.values():
                _check_schema(value, param, depth + 1)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), (dict, bool)):
            _check_schema(schema[key], param, depth + 1)
        elif key in schema:
            raise ApiError(400, f"a JSON schema's {key} must be a schema", param=param)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in schema:
            if not isinstance(schema[key], list):
                raise ApiError(400, f"a JSON schema's {key} must be a list", param=param)
            for value in schema[key]:
                _check_schema(value, param, depth + 1)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(
            400,
            f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters",
            param="stop",
        )
    return tuple(s for s in stops if s)


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return _flag(opts, "include_usage")


def _content(message: dict[str, Any], i: int) -> str:
    try:
        return text_of(message.get("content"))
    except ValueError as exc:
        where = f"messages[{i}]." if str(exc).startswith("content") else f"messages[{i}]: "
        raise ApiError(400, f"{where}{exc}", param=f"messages.{i}.content") from None


def parse_chat(body: dict[str, Any], loaded: P.Loaded | None = None) -> Job:
    common = _common(body, request_defaults(loaded))
    tools = parse_tools(body)
    if tools is not None and common["json_schema"]:
        raise ApiError(
            400,
            "response_format json_object/json_schema cannot be combined with tools",
            param="response_format",
        )
    top = body.get("top_logprobs")
    if _flag(body, "logprobs"):
        common["logprobs"] = int(_number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True) or 0)
    elif top is not None:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out, raw = [], []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role must be system, developer, user, assistant or tool",
                param=f"messages.{i}.role",
            )
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            _check_calls(calls, i)
        content = "" if calls and message.get("content") is None else _content(message, i)
        entry: dict[str, Any] = {"role": _ROLES[role], "content": content}
        if calls:
            entry["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": _arguments(c)}} for c in calls
            ]
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if isinstance(message.get(key), str):
                    entry[key] = message[key]
        raw.append(entry)
        out.append(ChatMessage(_ROLES[role], content))  # type: ignore[arg-type]
    return Job(kind="chat", messages=tuple(out), raw_messages=tuple(raw), tools=tools, **common)


def _check_calls(calls: Any, i: int) -> None:
    ok = isinstance(calls, list) and all(
        isinstance(c, dict)
        and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str)
        for c in calls
    )
    if not ok:
        raise ApiError(
            400,
            f'messages[{i}].tool_calls must be a list of {{"id", "type": "function", '
            '"function": {"name", "arguments"}}',
            param=f"messages.{i}.tool_calls",
        )


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as an object (clients send OpenAI's JSON text; templates want a dict)."""
    args = call["function"].get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return {"value": args}
    return args if isinstance(args, dict) else {"value": args}


def parse_completion(body: dict[str, Any], loaded: P.Loaded | None = None) -> Job:
    common = _common(body, request_defaults(loaded))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
    if body.get("logprobs") is not None:
        common["logprobs"] = int(_number(body, "logprobs", 0, MAX_TOP_LOGPROBS, integer=True))  # type: ignore[arg-type]
    for key in ("tools", "tool_choice"):
        if body.get(key):
            raise ApiError(400, f"{key} is only for /v1/chat/completions", param=key)
    return Job(kind="completion", prompt=prompt, **common)


def split_system(messages: tuple[ChatMessage, ...]) -> tuple[str, list[ChatMessage]]:
    """Leading system messages become the system prompt (the GUI's shape), the rest turns."""
    n = 0
    while n < len(messages) and messages[n].role == "system":
        n += 1
    return "\n\n".join(m.content for m in messages[:n]), list(messages[n:])
