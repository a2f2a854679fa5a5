"""Why a request failed, as it crosses the process boundary: one kind, one exception, one status.

The child sends `ErrorEvent(kind=ErrorKind.X.value, message=...)`; the parent turns it into
exactly one `KvDeckError` subclass (`exception_for`), and the API server into exactly one HTTP
status (`engine.serve.server`). Nothing re-parses the message text to find out what happened.
"""

from __future__ import annotations

from enum import Enum

from engine.core.errors import (
    Cancelled,
    ContextFull,
    InvalidSettings,
    KvDeckError,
    ModelFileError,
    NotReady,
    RuntimeFailure,
)


class ErrorKind(str, Enum):
    """The kinds of failure a live child reports (it stays ready for the next request)."""

    MODEL = "model"  # the file cannot be loaded as a model
    PARAMS = "params"  # a parameter was refused
    CONTEXT = "context"  # the prompt does not fit the context
    STATE = "state"  # no model loaded, no draft loaded, a request of the wrong kind now
    RUNTIME = "runtime"  # anything else that went wrong inside llama.cpp or the child
    CANCELLED = "cancelled"  # cancelled by the parent (user, replaced model, shutdown)

    @classmethod
    def parse(cls, value: str) -> ErrorKind:
        """The kind of a received event; an unknown value (another version's child) is RUNTIME."""
        try:
            return cls(value)
        except ValueError:
            return cls.RUNTIME


EXCEPTIONS: dict[ErrorKind, type[KvDeckError]] = {
    ErrorKind.MODEL: ModelFileError,
    ErrorKind.PARAMS: InvalidSettings,
    ErrorKind.CONTEXT: ContextFull,
    ErrorKind.STATE: NotReady,
    ErrorKind.RUNTIME: RuntimeFailure,
    ErrorKind.CANCELLED: Cancelled,
}


def exception_for(kind: str, message: str) -> KvDeckError:
    """The one exception class for an error event's kind, carrying its message."""
    return EXCEPTIONS[ErrorKind.parse(kind)](message)


def kind_for(exc: KvDeckError) -> ErrorKind:
    """The kind whose exception class ``exc`` is (the inverse of :func:`exception_for`); any
    other KvDeckError is RUNTIME."""
    for kind, cls in EXCEPTIONS.items():
        if type(exc) is cls:
            return kind
    return ErrorKind.RUNTIME
