"""The one exception type of the runtime child: a request failed, the child lives on.

Kept in its own module, below everything else in ``engine.child``, so every part of the child
(the model, the samplers, the tools) can raise it without importing one another. Its kind is an
:class:`ErrorKind`; on the wire it is the kind's value, and the parent turns it back into one
``KvDeckError`` subclass (``engine.protocol.errors.exception_for``).
"""

from __future__ import annotations

from engine.core.errors import KvDeckError
from engine.protocol import ErrorEvent
from engine.protocol.errors import ErrorKind, kind_for

__all__ = ["ErrorKind", "RequestError", "error_event"]


class RequestError(Exception):
    """A request failed in a way the child survives; ``kind`` tells the parent whose fault."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = ErrorKind(kind)


def error_event(
    req_id: int, exc: BaseException | None = None, *, kind: ErrorKind | None = None, message: str = ""
) -> ErrorEvent:
    """The ErrorEvent for a failed request: from an exception (its kind: a RequestError's own,
    a KvDeckError's by class, anything else is a runtime bug) or from an explicit kind."""
    if exc is not None:
        if isinstance(exc, RequestError):
            kind, message = exc.kind, str(exc)
        elif isinstance(exc, KvDeckError):
            kind, message = kind_for(exc), str(exc)
        else:
            kind, message = ErrorKind.RUNTIME, f"{type(exc).__name__}: {exc}"
    assert kind is not None
    return ErrorEvent(id=req_id, kind=kind.value, message=message)
