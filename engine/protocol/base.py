"""The wire format between the runtime host (parent) and the llama.cpp child process.

One JSON object per line, in both directions. Every message is a frozen dataclass registered
under a short ``type`` name, so both sides agree on the fields and a typo fails loudly in tests
instead of silently in the field. JSON (not pickle) keeps a crashed or hostile child from
executing anything in the parent: the worst a garbled line can do is fail to decode.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar, TypeVar

_REGISTRY: dict[str, type[Message]] = {}
#: Each registered type's field names, in order (read once: every line is encoded or decoded with them).
_NAMES: dict[str, tuple[str, ...]] = {}
_M = TypeVar("_M", bound=type)

#: Prefix of the line the child's abort hook writes to stderr just before ``abort()``.
ABORT_PREFIX = "KVDECK-ABORT: "
#: Appended to an abort message by the child: the RPC workers whose connection it found closed.
RPC_LOST_MARK = " | rpc workers lost: "
#: Lines longer than this are refused by the reader; a runaway child cannot exhaust memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


class ProtocolError(ValueError):
    """A line that is not a valid protocol message."""


@dataclass(frozen=True)
class Message:
    """Base class: subclasses set ``TYPE`` and are registered by :func:`message`."""

    TYPE: ClassVar[str] = ""


def message(cls: _M) -> _M:
    """Register a message dataclass under its ``TYPE``."""
    if cls.TYPE in _REGISTRY:
        raise RuntimeError(f"duplicate message type {cls.TYPE!r}")
    _REGISTRY[cls.TYPE] = cls
    _NAMES[cls.TYPE] = tuple(f.name for f in dataclasses.fields(cls))
    return cls


def _nested(value: object) -> object:
    """A dataclass inside a message (a plan, its settings) as JSON sees it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(msg: Message) -> bytes:
    """One line of JSON. The fields are read directly rather than through ``dataclasses.asdict``,
    which deep-copies every list (a Delta's tokens, a step's worth of them): the same text,
    a third of the time; nested dataclasses are converted where JSON meets them."""
    names = _NAMES.get(msg.TYPE) or tuple(f.name for f in dataclasses.fields(msg))
    data = {name: getattr(msg, name) for name in names}
    data["type"] = msg.TYPE
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_nested)
    return text.encode("utf-8") + b"\n"


def decode(line: bytes | str) -> Message:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    cls = _REGISTRY.get(str(data.pop("type", "")))
    if cls is None:
        raise ProtocolError("unknown message type")
    names = _NAMES[cls.TYPE]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ProtocolError(f"bad fields for {cls.TYPE}: {exc}") from None
