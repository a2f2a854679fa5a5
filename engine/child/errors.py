"""The one exception type of the runtime child: a request failed, the child lives on.

Kept in its own module, below everything else in ``engine.child``, so every part of the child
(the model, the samplers, the tools) can raise it without importing one another.
"""
from __future__ import annotations


class RequestError(Exception):
    """A request failed in a way the child survives; ``kind`` tells the parent whose fault."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind
