"""One API request's runtime requests and their events, and how a refusal becomes HTTP.

Split from engine.serve.server so the route code stays readable. A request with ``n`` choices
is ``n`` GenerateRequests in the child (parallel sequences, each with its own seed); their
events share one queue and are told apart by request id (``index``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

from engine import protocol as P
from engine.core.errors import KvDeckError
from engine.protocol.errors import ErrorKind, kind_for
from engine.runtime.host import RuntimeHost
from engine.serve.openai_api import ApiError

#: One HTTP answer per kind of refusal: (status, OpenAI error type, param, code, fixed message).
#: STATE is 503: the server only runs with a model loaded, so "no model" (or no draft) means it
#: is being replaced or stopped right now: a passing condition a client may retry, not a
#: conflict the client caused (409). MODEL is 500: a client cannot name a file here, so a model
#: that fails is the server's fault.
REFUSALS: dict[ErrorKind, tuple[int, str, str | None, str | None, str | None]] = {
    ErrorKind.CONTEXT: (400, "invalid_request_error", "messages", "context_length_exceeded", None),
    ErrorKind.PARAMS: (400, "invalid_request_error", None, None, None),
    ErrorKind.CANCELLED: (
        503,
        "server_error",
        None,
        "cancelled",
        "the request was cancelled (the model is being replaced or stopped)",
    ),
    ErrorKind.STATE: (503, "server_error", None, "state", None),
    ErrorKind.MODEL: (500, "server_error", None, "model", None),
    ErrorKind.RUNTIME: (500, "server_error", None, "runtime", None),
}


def model_id(loaded: P.Loaded) -> str:
    """The name the API gives the loaded model: its file name without ``.gguf``."""
    return Path(loaded.path).name.removesuffix(".gguf")


def refusal(kind: ErrorKind | str, message: str) -> ApiError:
    status, type_, param, code, text = REFUSALS[ErrorKind.parse(kind) if isinstance(kind, str) else kind]
    return ApiError(status, text or message, type_, param=param, code=code)


def refusal_of(msg: P.ErrorEvent) -> ApiError:
    return refusal(msg.kind, msg.message)


def refusal_for(exc: KvDeckError) -> ApiError:
    """The HTTP refusal for a KvDeckError raised by ``RuntimeHost.call`` (one class per kind)."""
    return refusal(kind_for(exc), str(exc))


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Gone(Exception):
    """The client disconnected before its reply was complete."""


class Call:
    """The events of one API request's runtime requests, carried from the host's reader thread
    into the event loop."""

    def __init__(self, host: RuntimeHost, on_done: Callable[[P.Done], None] | None = None) -> None:
        self.host = host
        self.on_done = on_done  # every reply that ended (the server's drafting tally)
        self.pid = host.pid  # the child this call's requests went to (it may be restarted)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[P.Message] = asyncio.Queue()
        self.req_ids: list[int] = []
        self.open: set[int] = set()

    def on_event(self, msg: P.Message) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        except RuntimeError:  # the event loop is closed: the server stopped
            pass

    def submit(self, build: Callable[[int], P.Message]) -> int:
        try:
            req_id = self.host.submit("generate", build, self.on_event)
        except KvDeckError as exc:
            raise ApiError(503, str(exc), "server_error", code="runtime_stopped") from None
        self.req_ids.append(req_id)
        self.open.add(req_id)
        return req_id

    def index(self, msg: P.Message) -> int:
        return self.req_ids.index(getattr(msg, "id", self.req_ids[0]))

    @property
    def ended(self) -> bool:
        return not self.open

    async def next(self, request: Request | None = None) -> P.Message:
        while True:
            try:  # events come in bursts (a batch step's in one write): no timer for those
                msg = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    msg = await asyncio.wait_for(self.queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if not self.host.running or self.host.pid != self.pid:
                        self.open.clear()
                        ended = self.host.last_outcome
                        why = ended.sentence if ended else "the runtime stopped"
                        raise ApiError(503, why, "server_error", code="runtime_stopped") from None
                    if request is not None and await request.is_disconnected():
                        raise Gone() from None
                    continue
            if isinstance(msg, (P.Done, P.ErrorEvent)):
                self.open.discard(getattr(msg, "id", 0))
            if isinstance(msg, P.Done) and self.on_done is not None:
                self.on_done(msg)
            return msg

    def cancel(self) -> None:
        for req_id in list(self.open):
            self.host.cancel(req_id)
        self.open.clear()


class Once:
    """Cleanup that may be reached from the stream's end and from its background task."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn: Callable[[], object] | None = fn

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()
