"""Tool calls for the API server: OpenAI's ``tools`` / ``tool_choice`` in, ``tool_calls`` out.

Rendering: the tools go to the model's own chat template (templates that support tools read
``tools`` and messages with ``tool_calls`` and role ``tool``). A template "renders tools" when
the prompt it makes with them names every tool; then the model sees what it was trained on.

A template that ignores tools (SmolLM2's, most small models'):

* ``tool_choice`` ``required`` or a named function still works: the tools are described in a
  system message (llama.cpp's "generic" format) and the reply is constrained by a grammar
  (a JSON schema of the call, converted in the child), so even a tiny model returns a call that
  parses and whose arguments validate against the function's parameters.
* ``auto`` is refused with a 400 that says so: the model was never taught to decide when to
  call, and silently dropping the tools would hide that from the client.

A model with no chat template at all cannot take tools in any mode (400).

Parsing (``auto``; ``required`` parses the same way): Hermes/Qwen ``<tool_call>{...}</tool_call>``,
Llama 3 ``<|python_tag|>`` or bare ``{"name", "parameters"}``, Mistral ``[TOOL_CALLS][...]`` and
``[TOOL_CALLS]name[ARGS]{...}``, Gemma's ```` ```tool_code ```` / ``[fn(a=1)]`` Python calls,
and generic JSON (``{"tool_calls": [...]}``, an object with ``name`` and ``arguments``, or a list
of them, in a ```` ```json ```` fence or not). Only functions the request declared count as calls.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from engine.serve.errors import ApiError

MAX_TOOLS = 128


@dataclass(frozen=True)
class Tools:
    """The request's function tools and what it asked for: auto | none | required | a name."""

    functions: tuple[dict[str, Any], ...]
    choice: str
    named: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.functions)

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "named")

    def openai_list(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": f} for f in self.functions]


def parse_tools(body: dict[str, Any]) -> Tools | None:
    """Check ``tools`` and ``tool_choice``; None when the request has no tools (or ``none``)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if body.get("functions") or body.get("function_call"):
        raise ApiError(
            400, "functions and function_call are deprecated; use tools and tool_choice", param="functions"
        )
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ApiError(400, f"tools must be a list of at most {MAX_TOOLS} tools", param="tools")
    functions = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if (
            not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", fn["name"])
        ):
            raise ApiError(
                400,
                f'tools[{i}] must be {{"type": "function", "function": {{"name": '
                "...}}} with a name of letters, digits, _ . - (at most 64)",
                param=f"tools.{i}",
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ApiError(
                400,
                f"tools[{i}].function.parameters must be a JSON schema object",
                param=f"tools.{i}.function.parameters",
            )
        functions.append(
            {"name": fn["name"], "description": str(fn.get("description", "")), "parameters": params}
        )
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools have duplicate names", param="tools")
    if choice is None or choice == "auto":
        return Tools(tuple(functions), "auto")
    if choice == "none":
        return None
    if choice == "required":
        return Tools(tuple(functions), "required")
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise ApiError(
            400,
            'tool_choice must be none, auto, required or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in names:
        raise ApiError(
            400, f"tool_choice names the function {name!r}, which is not in tools", param="tool_choice"
        )
    return Tools(tuple(functions), "named", name)


def call_schema(tools: Tools) -> dict[str, Any]:
    """The JSON schema a forced reply must match: one call of the named (or any) function."""

    def one(fn: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    fns = [f for f in tools.functions if tools.choice != "named" or f["name"] == tools.named]
    return one(fns[0]) if len(fns) == 1 else {"anyOf": [one(f) for f in fns]}


def generic_system(tools: Tools) -> str:
    """The system text that describes the tools to a model whose template cannot."""
    lines = ["You can call these functions (JSON schemas of their arguments):"]
    for f in tools.functions:
        lines.append(json.dumps(f, ensure_ascii=False))
    lines.append(
        'To call a function, reply with only a JSON object: {"name": "<function name>", '
        '"arguments": {<its arguments>}}.'
    )
    return "\n".join(lines)


def message_dicts(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    """Messages for the template. A template without tool support gets the calls as JSON text
    and the results as user turns, which every template can render."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if native:
            out.append(m)
        elif m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": _args(c["function"].get("arguments"))}
                for c in m["tool_calls"]
            ]
            text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            out.append({"role": "assistant", "content": ((m.get("content") or "") + text)})
        elif m["role"] == "tool":
            who = m.get("name") or m.get("tool_call_id") or "the function"
            out.append({"role": "user", "content": f"Result of {who}: {m.get('content', '')}"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _args(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# ----------------------------------------------------------------------------- parsing replies
_FENCE = re.compile(r"```(?:json|tool_code|python)?\s*\n?(.*?)```", re.DOTALL)


def parse_calls(text: str, names: tuple[str, ...]) -> tuple[str, list[dict[str, Any]]]:
    """(content left, calls) from a reply; each call is OpenAI's ``{"id", "type", "function"}``."""
    found: list[tuple[str, Any]] = []
    rest = text
    blocks = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.DOTALL)
    if blocks:  # Hermes / Qwen
        for b in blocks:
            found += _json_calls(b)
        rest = re.sub(r"<tool_call>.*?(?:</tool_call>|$)", "", text, flags=re.DOTALL)
    elif "[TOOL_CALLS]" in text:  # Mistral
        head, _, tail = text.partition("[TOOL_CALLS]")
        rest = head
        if "[ARGS]" in tail:
            for part in tail.split("[TOOL_CALLS]"):
                name, _, args = part.partition("[ARGS]")
                found.append((name.strip(), _loads(args.strip())))
        else:
            found += _json_calls(tail)
    elif "<|python_tag|>" in text:  # Llama 3.1
        head, _, tail = text.partition("<|python_tag|>")
        rest = head
        for part in tail.split(";"):
            found += _json_calls(part)
    else:
        body = text.strip()
        fence = _FENCE.search(body)
        if fence:
            body = fence.group(1).strip()
        found = _json_calls(body) or _python_calls(body)
        if found:
            rest = (text[: fence.start()] + text[fence.end() :]) if fence else ""
    calls = []
    for name, args in found:
        if name not in names or (args is not None and not isinstance(args, dict)):
            return text, []  # not a call of a declared function: the reply is plain text
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args or {}, ensure_ascii=False)},
            }
        )
    return (rest.strip() if calls else text), calls


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_calls(text: str) -> list[tuple[str, Any]]:
    data = _loads(text.strip())
    if isinstance(data, dict) and isinstance(data.get("tool_calls"), list):
        data = data["tool_calls"]
    elif isinstance(data, dict) and isinstance(data.get("tool_call"), dict):
        data = [data["tool_call"]]
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):
            item = item["function"]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        args = item.get("arguments", item.get("parameters", {}))
        out.append((item["name"], _args(args)))
    return out


def _python_calls(text: str) -> list[tuple[str, Any]]:
    """Gemma's ``[fn(a=1), g(b="x")]`` or ``fn(a=1)``: keyword arguments with literal values."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return []
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    out = []
    for node in nodes:
        if (
            not isinstance(node, ast.Call)
            or node.args
            or not isinstance(node.func, (ast.Name, ast.Attribute))
        ):
            return []
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        try:
            args = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            return []
        out.append((name, args))
    return out


def may_be_call(text: str) -> bool:
    """Whether streamed text could still be the start of a tool call (then it is held back)."""
    t = text.lstrip()
    if not t:
        return True
    return t[0] in "{[`" or any(
        m.startswith(t[: len(m)]) or t.startswith(m)
        for m in ("<tool_call>", "<|python_tag|>", "[TOOL_CALLS]")
    )
