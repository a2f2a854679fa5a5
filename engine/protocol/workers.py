"""Protocol messages about llama.cpp RPC workers: the free memory of the workers' devices, asked
of the runtime child that holds them. A worker serves one client at a time, so while a runtime
is connected only that runtime can ask (``ggml_backend_rpc_get_device_memory`` over its own
connection, engine.child.rpc). ``engine.protocol`` re-exports these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.protocol.base import Message, message


@message
@dataclass(frozen=True)
class RemoteMemoryRequest(Message):
    TYPE: ClassVar[str] = "remote_memory"
    id: int


@message
@dataclass(frozen=True)
class RemoteMemory(Message):
    """One entry per remote device in llama.cpp's order: endpoint, index on that worker,
    free_bytes, total_bytes."""

    TYPE: ClassVar[str] = "remote_memory_reply"
    id: int
    devices: list[dict[str, Any]] = field(default_factory=list)
