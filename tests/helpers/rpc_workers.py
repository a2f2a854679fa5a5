"""llama.cpp RPC workers for tests: real `kvdeck worker` processes on loopback ports, and two
stand-ins for llama.cpp servers we cannot run here (one of another protocol version, one that
hangs up).

Tests that need RPC skip exactly when the installed runtime says ``llama_supports_rpc()`` is
False (asked in a child process: the test process never loads llama.cpp), so a runtime built
with RPC, as `make` builds it, runs them and a failure cannot hide behind the skip.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from engine.runtime.worker_process import WorkerProcess


def _runtime_supports_rpc() -> bool:
    code = "import llama_cpp.llama_cpp as L; print(bool(L.llama_supports_rpc()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return out.stdout.strip() == "True"


RPC = _runtime_supports_rpc()
needs_rpc = pytest.mark.skipif(
    not RPC, reason="the installed llama.cpp runtime has no RPC backend (llama_supports_rpc() is False)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def workers(n: int) -> Iterator[list[WorkerProcess]]:
    """``n`` workers lending this machine's CPU on free loopback ports; always stopped."""
    started: list[WorkerProcess] = []
    try:
        for _ in range(n):
            w = WorkerProcess("127.0.0.1", free_port(), threads=1)
            w.start()
            started.append(w)
        yield started
    finally:
        for w in started:
            w.stop()


class FakeServer:
    """A TCP server that answers the first message like a llama.cpp RPC server would not:
    ``version`` answers HELLO as a worker of that protocol version (the pre-7 layout: a HELLO
    with an input is refused by closing, one without gets 3 version bytes); ``hang_up`` closes
    every connection at once."""

    def __init__(self, version: tuple[int, int, int] | None = None) -> None:
        self.version = version
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.version is None:
                    continue  # hang up
                head = conn.recv(9)
                if len(head) == 9 and struct.unpack("<Q", head[1:])[0] == 0:
                    conn.sendall(struct.pack("<Q", 3) + bytes(self.version))

    def close(self) -> None:
        self.sock.close()


class DroppingProxy:
    """A loopback TCP relay in front of a real worker whose ``drop()`` cuts every connection
    through it while it keeps listening: a worker that dropped its client without going away
    (as a restarted worker or a firewall's idle timeout would)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        try:  # one side hung up: so does the other (the worker serves one client at a time)
            dst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def drop(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self) -> None:
        self.drop()
        self.sock.close()
