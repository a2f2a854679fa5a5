"""What the chat store hands out: conversations, messages, search hits, reply-end reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model_path: str | None
    model_key: str | None
    system_prompt: str
    created: float  # seconds since the epoch
    updated: float
    settings: dict[str, Any] = field(default_factory=dict)  # sampling, overflow policy and cut


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    complete: bool
    created: float
    n_tokens: int | None
    tokens_per_s: float | None
    end_reason: str | None = None  # how a reply ended: END_REASONS; None for other messages


#: Why a reply ended, as stored and as the transcript words it.
END_REASONS = {
    "eog": "",  # the model finished its answer
    "stop": "stopped by you",
    "length": "reached the maximum reply length",
    "context": "the context is full",
    "crash": "the runtime stopped",
}


@dataclass(frozen=True)
class SearchHit:
    """A conversation that matches a search, with the matching text around the words found."""

    conversation_id: int
    title: str
    message_id: int | None  # None: the title matched
    snippet: str
