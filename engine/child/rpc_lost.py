"""Which RPC worker connection broke, found inside the child as ggml-rpc aborts.

ggml-rpc aborts on any failed send or receive with one sentence that names no worker
("Remote RPC server crashed or returned malformed response", ``RPC_STATUS_ASSERT`` in
ggml-rpc.cpp). The parent can tell a worker that is gone (it no longer accepts connections),
but not one that dropped this child's connection and still listens (a restarted worker, a
proxy or firewall that cut the stream). At the abort the child still holds its sockets: a
connection to a worker is idle between commands, so one that reads as closed (end of stream
or reset) without blocking is the one that went away. The abort hook appends those endpoints
to its message (``RPC_LOST_MARK``) for engine.runtime.workers to read.

By the time the hook runs, a dropped connection has often been reset, not just half-closed:
a peer that closes with our last command still unread in its socket sends a reset instead of
an end of stream (a worker process that exits, a proxy, ``tcp_close``), and so does a closed
peer to whatever ggml-rpc sends after the close (``send_rpc_cmd`` writes a command in three
``send`` calls). A reset takes the socket to TCP state CLOSE, where ``getpeername`` answers
ENOTCONN (``inet_getname`` with peer=1); ``SO_PEERNAME`` still answers there (peer=2), so the
peer is read that way.
"""

from __future__ import annotations

import os
import socket
import struct

from engine.protocol import RPC_LOST_MARK


def _addresses(endpoint: str) -> set[tuple[str, int]]:
    host, _, port = endpoint.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return set()
    return {(str(info[4][0]), int(info[4][1])) for info in infos}


_SO_PEERNAME = getattr(socket, "SO_PEERNAME", 28)  # Linux: include/uapi/asm-generic/socket.h
_SOCKADDR_LEN = {socket.AF_INET: 16, socket.AF_INET6: 28}  # sockaddr_in, sockaddr_in6


def _peer(sock: socket.socket) -> tuple[str, int] | None:
    """The address a TCP socket is or was connected to, also once its peer reset it."""
    size = _SOCKADDR_LEN.get(sock.family)
    if size is None or sock.type != socket.SOCK_STREAM:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERNAME, size)
    except OSError:
        return None  # never connected
    (port,) = struct.unpack_from("!H", raw, 2)
    host = raw[4:8] if sock.family == socket.AF_INET else raw[8:24]
    return socket.inet_ntop(sock.family, host), int(port)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # idle and open
    except OSError:
        return True  # reset


def lost_endpoints(endpoints: list[str]) -> list[str]:
    """The endpoints among ``endpoints`` whose connection from this process reads as closed."""
    wanted = {addr: e for e in endpoints for addr in _addresses(e)}
    lost: list[str] = []
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return lost
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket
        with sock:
            peer = _peer(sock)
            e = wanted.get(peer) if peer is not None else None
            if e is not None and e not in lost and _closed(sock):
                lost.append(e)
    return lost


def mark(message: bytes) -> bytes:
    """The abort message with the lost workers appended, when ggml-rpc is the one aborting."""
    endpoints = [e for e in os.environ.get("KVDECK_RPC", "").split(",") if e]
    if not endpoints or b"RPC" not in message:
        return message
    lost = lost_endpoints(endpoints)
    return message + (RPC_LOST_MARK + ",".join(lost)).encode() if lost else message
