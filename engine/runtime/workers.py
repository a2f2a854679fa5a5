"""Workers: llama.cpp RPC servers (ggml-rpc) that lend their devices to our runtime child.

The parent checks every worker itself, over ggml-rpc's own wire protocol, before a runtime child
connects to it. It has to: ggml-rpc ends the *whole process* (``GGML_ABORT``) when a connection
is refused, a handshake fails or a version differs (``rpc_dispatcher::start``,
``negotiate_hello`` in ggml-rpc.cpp), so a bad endpoint must be refused in words before any
child sees it. The same few commands give the plan each remote device's free and total memory
(``RPC_CMD_GET_DEVICE_MEMORY``, what ``ggml_backend_rpc_get_device_memory`` sends) without
loading llama.cpp in the parent.

A worker serves one client at a time (``ggml_backend_rpc_start_server`` accepts, serves until
the client hangs up, then accepts the next), so a probe of a worker that a runtime child is
using waits in the accept queue: it times out and says the worker is busy. While a model is
loaded the child asks for the memory on its own connection instead.

Wire format (ggml-rpc.cpp, protocol 7.0.0 at llama.cpp 0c1e570): a request is the command byte,
the input size (u64, little endian) and the input; a reply is its size (u64) and its bytes.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from dataclasses import dataclass, field

from engine.core.errors import KvDeckError
from engine.core.memory_types import Device, rpc_device_name
from engine.protocol import RPC_LOST_MARK
from engine.runtime.outcome import ProcessOutcome

#: RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION of the runtime we ship (ggml/include/ggml-rpc.h).
PROTOCOL = (7, 0, 0)
_CMD_GET_ALIGNMENT = 1
_CMD_GET_DEVICE_MEMORY = 11
_CMD_HELLO = 14  # static_assert(RPC_CMD_HELLO == 14) in ggml-rpc.cpp: fixed across versions
_CMD_DEVICE_COUNT = 15
_CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE (transport.h); all zero: "no RDMA, plain TCP"
#: ggml-cpu's buffer alignment (TENSOR_ALIGNMENT): a remote device with it lays tensors out like
#: host RAM (no padded quantized rows, as a CUDA buffer has); see `Device.host_layout`.
_HOST_ALIGNMENT = 32
DEFAULT_PORT = 50052  # rpc-server's default
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS


class WorkerError(KvDeckError):
    """A worker that cannot be used: unreachable, busy, or of another protocol version."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"worker {endpoint} {message}")
        self.endpoint = endpoint


@dataclass(frozen=True)
class WorkerInfo:
    """What a probe found: the worker's protocol version and its devices as plan devices."""

    endpoint: str
    version: tuple[int, int, int]
    devices: tuple[Device, ...] = field(default_factory=tuple)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT]`` as llama.cpp's ``--rpc`` reads it; one line for a bad entry.

    llama.cpp splits an endpoint at its first colon (``parse_endpoint``), so a bare IPv6 address
    cannot be used; a port is required (rpc-server's default is 50052)."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.partition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KvDeckError(f"--rpc: {part!r} is not HOST:PORT (for example 192.168.1.20:{DEFAULT_PORT})")
        endpoint = f"{host}:{int(port)}"
        if endpoint not in out:
            out.append(endpoint)
    if len(out) > MAX_WORKERS:
        raise KvDeckError(f"--rpc: at most {MAX_WORKERS} workers (llama.cpp's GGML_RPC_MAX_SERVERS)")
    return tuple(out)


class _Conn:
    def __init__(self, endpoint: str, timeout: float) -> None:
        host, _sep, port = endpoint.rpartition(":")
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        except ConnectionRefusedError:
            raise WorkerError(endpoint, "refused the connection: nothing is listening there") from None
        except TimeoutError:
            raise WorkerError(endpoint, f"did not accept a connection within {timeout:g} s") from None
        except OSError as exc:
            raise WorkerError(endpoint, f"cannot be reached: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.sock.close()

    def send(self, cmd: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)

    def recv(self) -> bytes:
        size = struct.unpack("<Q", self._exact(8))[0]
        if size > 1 << 16:
            raise WorkerError(self.endpoint, "answered with a malformed reply (not a llama.cpp RPC worker?)")
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError
            data += chunk
        return data

    def call(self, cmd: int, payload: bytes, size: int) -> bytes:
        self.send(cmd, payload)
        reply = self.recv()
        if len(reply) != size:
            raise WorkerError(self.endpoint, "answered with a malformed reply (not a llama.cpp RPC worker?)")
        return reply


def _version_words(version: tuple[int, int, int]) -> str:
    return "{}.{}.{}".format(*version)


def _mismatch(endpoint: str, version: tuple[int, int, int]) -> WorkerError:
    return WorkerError(
        endpoint,
        f"speaks RPC protocol {_version_words(version)} but this runtime speaks "
        f"{_version_words(PROTOCOL)}: run the same llama.cpp version on both machines",
    )


def _legacy_version(endpoint: str, timeout: float) -> tuple[int, int, int] | None:
    """A worker older than protocol 7 closes the connection on our 24-byte HELLO ("HELLO request
    size mismatch"); its own HELLO had no input and a 3-byte reply, so ask that way for its
    version."""
    conn = _Conn(endpoint, timeout)
    try:
        conn.send(_CMD_HELLO)
        reply = conn.recv()
    except (OSError, WorkerError):
        return None
    finally:
        conn.close()
    return (reply[0], reply[1], reply[2]) if len(reply) >= 3 else None


def probe(endpoint: str, timeout: float = 3.0) -> WorkerInfo:
    """Handshake with a worker and read its devices (memory, buffer alignment); every failure
    is one `WorkerError` sentence naming the endpoint."""
    conn = _Conn(endpoint, timeout)
    try:
        try:
            conn.send(_CMD_HELLO, bytes(_CONN_CAPS))
            reply = conn.recv()
        except TimeoutError:
            raise WorkerError(
                endpoint,
                f"accepted the connection but did not answer within {timeout:g} s: a worker serves "
                "one client at a time, so another program is probably using it",
            ) from None
        except (ConnectionResetError, BrokenPipeError):
            conn.close()
            version = _legacy_version(endpoint, timeout)
            if version is not None and version[0] != PROTOCOL[0]:
                raise _mismatch(endpoint, version) from None
            raise WorkerError(
                endpoint, "closed the connection during the handshake (not a llama.cpp RPC worker?)"
            ) from None
        version = (reply[0], reply[1], reply[2]) if len(reply) >= 3 else (0, 0, 0)
        # negotiate_hello: the major must match and the worker's minor may not be newer
        if version[0] != PROTOCOL[0] or version[1] > PROTOCOL[1]:
            raise _mismatch(endpoint, version)
        if len(reply) != 4 + _CONN_CAPS:
            raise WorkerError(endpoint, "answered the handshake with a malformed reply")
        try:
            (count,) = struct.unpack("<I", conn.call(_CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for i in range(count):
                free, total = struct.unpack(
                    "<QQ", conn.call(_CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16)
                )
                (align,) = struct.unpack("<Q", conn.call(_CMD_GET_ALIGNMENT, struct.pack("<I", i), 8))
                devices.append(
                    Device(
                        rpc_device_name(endpoint, i),
                        "gpu",  # what ggml-rpc reports for every remote device
                        total,
                        free,
                        f"worker {endpoint}, device {i}",
                        endpoint=endpoint,
                        host_layout=align <= _HOST_ALIGNMENT,
                    )
                )
        except (OSError, ConnectionResetError):
            raise WorkerError(endpoint, "closed the connection while listing its devices") from None
        return WorkerInfo(endpoint, version, tuple(devices))
    finally:
        conn.close()


def probe_all(endpoints: tuple[str, ...], timeout: float = 3.0) -> list[WorkerInfo]:
    """Every worker probed in order; the first unusable one refuses the whole list."""
    return [probe(e, timeout) for e in endpoints]


def remote_devices(endpoints: tuple[str, ...], timeout: float = 3.0) -> list[Device]:
    """The workers' devices in llama.cpp's order (servers in the order given, devices in index
    order), which is the order llama.cpp puts them in, ahead of local GPUs."""
    return [d for w in probe_all(endpoints, timeout) for d in w.devices]


def dead_workers(endpoints: tuple[str, ...], timeout: float = 1.0) -> list[str]:
    """The endpoints that no longer accept a connection (after a runtime child died on one)."""
    dead = []
    for e in endpoints:
        try:
            _Conn(e, timeout).close()
        except WorkerError:
            dead.append(e)
    return dead


_DOING = {
    "generate": "decoding",
    "load": "loading the model",
    "bench": "running a benchmark",
    "start": "the runtime started",
    "idle": "the model was idle",
}


def worker_outcome(outcome: ProcessOutcome, endpoints: tuple[str, ...]) -> ProcessOutcome:
    """Name the worker that ended a runtime child. When a worker's socket fails, ggml-rpc aborts
    with "Remote RPC server crashed or returned malformed response" (``RPC_STATUS_ASSERT``) and
    names nobody; the child's abort hook appends the workers whose connection it found closed
    (engine.child.rpc_lost: one that dropped the connection but still listens), and a worker
    that no longer accepts a connection went away too."""
    mark = RPC_LOST_MARK.strip()
    message, _, named = outcome.abort_message.partition(mark)
    if named:
        sentence = outcome.sentence.replace(mark + named, "").rstrip()
        outcome = dataclasses.replace(outcome, abort_message=message.strip(), sentence=sentence)
    lost = [e.strip() for e in named.split(",") if e.strip() in endpoints]
    dead = lost + [e for e in dead_workers(endpoints) if e not in lost]
    if not dead:
        return outcome
    doing = _DOING.get(outcome.phase, outcome.phase)
    sentence = f"worker {', '.join(dead)} went away while {doing}"
    return dataclasses.replace(outcome, sentence=sentence, lost_workers=tuple(dead))
