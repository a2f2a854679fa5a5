"""A worker on this machine: llama.cpp's RPC server in a child process (engine.child.worker).

`WorkerProcess` starts it, waits until it answers a handshake on its port, and then follows
it: its devices and their memory, whether a client is connected and from where, and how it
ended. `kvdeck worker` and the window's "Share this machine's GPU" both use it.

ggml-rpc has no authentication: whoever reaches the port can allocate memory and run graphs on
the lent devices (tools/rpc/README.md). So it binds loopback unless told otherwise, and
`exposure_warning` says in words what binding beyond loopback means.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from engine.core.errors import KvDeckError
from engine.runtime.outcome import module_command
from engine.runtime.workers import DEFAULT_PORT, WorkerError, probe


@dataclass(frozen=True)
class LentDevice:
    name: str
    description: str
    free_bytes: int
    total_bytes: int


def exposure_warning(host: str) -> str:
    """A sentence for a bind address beyond loopback, or "" for loopback."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return ""
    return (
        f"warning: this worker listens on {host}, beyond this machine. llama.cpp's RPC server has "
        "no password and no encryption: anyone who can reach the port can use its memory and run "
        "code on its devices. Only do this on a network you trust, behind a firewall."
    )


def worker_command(endpoint: str, devices: list[str], cache_dir: str | None, threads: int) -> list[str]:
    base = (
        [sys.executable, "--rpc-worker"]
        if getattr(sys, "frozen", False)
        else module_command("engine.child.worker")
    )
    cmd = base + [endpoint]
    for d in devices:
        cmd += ["--device", d]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


class WorkerProcess:
    """One worker child. ``start()`` returns once the worker answers on its port (or raises one
    sentence); ``stop()`` ends it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        devices: list[str] | None = None,
        cache_dir: str | None = None,
        threads: int = 0,
        on_client: Callable[[str, bool], None] | None = None,
    ) -> None:
        """``on_client(peer, connected)`` is called (on a reader thread) when a client connects
        or disconnects, from ggml-rpc's own lines (peer "" for one gone before it was named);
        the readiness probe is not reported."""
        if not 0 < port < 65536:
            raise KvDeckError(f"--port must be between 1 and 65535, not {port}")
        if threads < 0:
            raise KvDeckError(f"--threads must not be negative, not {threads}")
        self.host, self.port = host, port
        self.endpoint = f"{host}:{port}"
        self._devices_wanted = list(devices or [])
        self._cache_dir = cache_dir
        self._threads = threads
        self._proc: subprocess.Popen[bytes] | None = None
        self.devices: list[LentDevice] = []
        self.threads = 0
        self._stderr: list[str] = []
        self._on_client = on_client
        self._probed = threading.Event()  # the readiness probe's connection has closed

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> None:
        self._check_port()
        if self._cache_dir:
            try:
                Path(self._cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KvDeckError(f"cannot use the cache folder {self._cache_dir}: {exc.strerror}") from None
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = worker_command(self.endpoint, self._devices_wanted, self._cache_dir, self._threads)
        try:
            self._proc = proc = subprocess.Popen(  # stdin: the child exits when we are gone
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        except OSError as exc:
            raise KvDeckError(f"cannot start the worker process: {exc}") from None
        assert proc.stdout is not None
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True).start()
        first = proc.stdout.readline()
        head: dict[str, Any]
        try:
            head = json.loads(first) if first.strip() else {"error": self._died_words(proc)}
        except ValueError:
            head = {"error": f"the worker process wrote {first[:80]!r} instead of its devices"}
        if "error" in head:
            self.stop()
            raise KvDeckError(f"cannot start a worker: {head['error']}")
        self.devices = [LentDevice(**d) for d in head["devices"]]
        self.threads = int(head.get("threads", 0))
        threading.Thread(target=self._read_stdout, args=(proc,), daemon=True).start()
        self._wait_listening(proc, timeout)
        self._probed.wait(5.0)  # so that its lines are not taken for a client's

    def _check_port(self) -> None:
        """Refuse a port already taken before starting (a worker there would answer our
        readiness probe in the new worker's place)."""
        try:
            with socket.create_server((self.host, self.port)):
                pass
        except OSError as exc:
            why = (
                "is already in use (another worker?)"
                if exc.errno == errno.EADDRINUSE
                else f"cannot be used: {os.strerror(exc.errno or 0)}"
            )
            raise KvDeckError(f"port {self.port} on {self.host} {why}") from None

    def _wait_listening(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Until the port answers a handshake; a worker that exits first (port taken) is one
        sentence. Polls, because ggml-rpc says nothing when it starts listening."""
        deadline = timeout
        step = 0.05
        while deadline > 0:
            if proc.poll() is not None:
                raise KvDeckError(f"cannot start a worker on {self.endpoint}: {self._died_words(proc)}")
            try:
                probe(self.endpoint, timeout=5.0)
                return
            except WorkerError:
                pass
            try:
                proc.wait(step)
            except subprocess.TimeoutExpired:
                pass
            deadline -= step
        self.stop()
        raise KvDeckError(f"the worker on {self.endpoint} did not start listening within {timeout:g} s")

    def _died_words(self, proc: subprocess.Popen[bytes]) -> str:
        proc.wait(5)
        text = " ".join(self._stderr[-3:]) or f"exit status {proc.returncode}"
        if "server socket" in text:
            return f"port {self.port} on {self.host} is in use or cannot be bound"
        return text

    def stop(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def peers(self) -> list[str]:
        """``host:port`` of every client connected now (from the worker's sockets)."""
        if not self.running or self.pid is None:
            return []
        try:
            conns = psutil.Process(self.pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            return []
        return [
            f"{c.raddr.ip}:{c.raddr.port}" for c in conns if c.raddr and c.status == psutil.CONN_ESTABLISHED
        ]

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _read_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        """Follow ggml-rpc's own lines: the server serves one client at a time and prints
        "Accepted client connection" / "Client connection closed" around each (ggml-rpc.cpp,
        ``ggml_backend_rpc_start_server``), naming nobody; who it is comes from the worker's
        socket (`peers`) when the first line is read. The first client is our readiness probe."""
        assert proc.stdout is not None
        client = ""
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line == "Accepted client connection":
                client = ", ".join(self.peers())  # "": it left before it could be named
                if self._probed.is_set() and self._on_client is not None:
                    self._on_client(client, True)
            elif line == "Client connection closed":
                if not self._probed.is_set():
                    self._probed.set()
                elif self._on_client is not None:
                    self._on_client(client, False)

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                self._stderr = (self._stderr + [text])[-20:]
