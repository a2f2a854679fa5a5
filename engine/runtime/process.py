"""The runtime child as a process: start it, send requests, read its events, see it end.

llama.cpp aborts the whole process on asserts, CUDA errors and a few bad inputs, and device
memory is only reliably returned when a process exits. So the model lives in a child process;
:class:`RuntimeProcess` owns that process, the JSON-lines channel to it (one request id per
request, its events routed back on a reader thread) and turns its death into a typed
:class:`ProcessOutcome` with a sentence a user can read. The typed requests (load, generate,
bench, …) are :class:`engine.runtime.host.RuntimeHost`, built on this; nothing here imports
llama.cpp.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine import protocol as P
from engine.core.errors import KvDeckError, RuntimeFailure
from engine.runtime.outcome import Exited, ProcessOutcome, child_command, describe_exit

log = logging.getLogger("kvdeck.runtime")
native_log = logging.getLogger("kvdeck.llama")

_Self = TypeVar("_Self", bound="RuntimeProcess")


class _Pending:
    def __init__(self, kind: str, on_event: Callable[[P.Message], None] | None) -> None:
        self.kind = kind
        self.on_event = on_event
        self.done: queue.SimpleQueue[P.Message | KvDeckError] = queue.SimpleQueue()


#: The events that end a request (its waiter is answered, its entry forgotten).
_FINAL: tuple[type[P.Message], ...] = (P.Loaded, P.Done, P.Tokens, P.Stats, P.Unloaded, P.ErrorEvent)
_FINAL += (P.PrecisionResult,)  # KV precision check (engine.child.precision)
_FINAL += (P.BenchResult,)  # speed benchmark (engine.child.bench)
_FINAL += (P.PairReply,)  # draft compatibility (engine.plan.pairing)
_FINAL += (P.DraftLoaded, P.DraftUnloaded)  # speculative decoding (engine.child.speculative)
_FINAL += (P.Detokenized, P.Embeddings)  # the API server's /detokenize and /v1/embeddings
_FINAL += (P.RemoteMemory,)  # llama.cpp RPC workers' memory (engine.child.rpc)


class RuntimeProcess:
    """One child process; start it, send requests, get events. Thread-safe.

    As a context manager (``with RuntimeHost() as host:``) it starts the child, waits until it
    is ready (``ready_timeout`` seconds) and always stops it, even when a step fails: a leaked
    child would keep its model's memory after the caller is gone. Long-lived owners (the GUI)
    call :meth:`start` and :meth:`stop` themselves.
    """

    def __init__(
        self,
        on_event: Callable[[object], None] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        rpc: tuple[str, ...] = (),
    ) -> None:
        #: llama.cpp RPC workers the child registers at start (engine.child.rpc); probe them
        #: first (engine.runtime.workers): ggml-rpc aborts the child on one it cannot reach.
        self.rpc = tuple(rpc)
        self._on_event = on_event
        self._env = env
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._abort_message = ""
        self._phase = "start"
        self._stopping = False
        self._ready = threading.Event()
        self.hello: P.Hello | None = None
        self.outcome: ProcessOutcome | None = None
        #: How the previous child ended; kept after a restart, for requests it took with it.
        self.last_outcome: ProcessOutcome | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self: _Self) -> _Self:
        self.start()
        try:
            self.wait_ready(self._ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.running:
            return
        env = dict(os.environ if self._env is None else self._env)
        env["GGML_NO_BACKTRACE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env["KVDECK_RPC"] = ",".join(self.rpc)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr_tail.clear()
        self._abort_message = ""
        self._stopping = False
        self._phase = "start"
        self._ready.clear()
        self.outcome = None
        self.hello = None
        try:
            self._proc = subprocess.Popen(
                child_command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start the runtime process: {exc}") from None
        proc = self._proc
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, args=(proc,), name="kvdeck-stderr", daemon=True
        )
        self._stderr_thread.start()
        threading.Thread(target=self._read_events, args=(proc,), name="kvdeck-events", daemon=True).start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self.outcome is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def phase(self) -> str:
        return self._phase

    def wait_ready(self, timeout: float = 60.0) -> P.Hello:
        if not self._ready.wait(timeout) or self.hello is None:
            raise RuntimeFailure(
                self.outcome.sentence if self.outcome else "the runtime did not start in time"
            )
        return self.hello

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit (freeing all its memory); kill it if it does not."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._stopping = True
        try:
            self._send(P.ShutdownRequest())
            proc.stdin.close()  # type: ignore[union-attr]
        except (OSError, RuntimeFailure):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """Kill the child at once (used for "force stop" and in fault tests)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    # ------------------------------------------------------------------ requests
    def _send(self, msg: P.Message) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            raise RuntimeFailure(self.outcome.sentence if self.outcome else "the runtime is not running")
        data = P.encode(msg)
        with self._write_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise RuntimeFailure("the runtime process has stopped") from None

    def _submit(
        self, kind: str, build: Callable[[int], P.Message], on_event: Callable[[P.Message], None] | None
    ) -> tuple[int, _Pending]:
        req_id = next(self._ids)
        pending = _Pending(kind, on_event)
        with self._lock:
            self._pending[req_id] = pending
        if kind in ("load", "generate", "bench"):
            self._phase = kind
        try:
            self._send(build(req_id))
        except RuntimeFailure:
            with self._lock:
                self._pending.pop(req_id, None)
            raise
        return req_id, pending

    def submit(
        self,
        kind: str,
        build: Callable[[int], P.Message],
        on_event: Callable[[P.Message], None] | None = None,
    ) -> int:
        """Send any request built from its new id; its events go to ``on_event`` on the reader
        thread. For requests the typed helpers of ``RuntimeHost`` do not cover (engine.serve.server)."""
        return self._submit(kind, build, on_event)[0]

    def call(
        self,
        kind: str,
        build: Callable[[int], P.Message],
        timeout: float | None = None,
        on_event: Callable[[P.Message], None] | None = None,
    ) -> P.Message:
        """Send any request built from its new id and wait for its final event; a refusal is
        raised as the one KvDeckError subclass of its kind (``engine.protocol.errors``)."""
        req_id, pending = self._submit(kind, build, on_event)
        try:
            result = pending.done.get(timeout=timeout)
        except queue.Empty:
            self.cancel(req_id)
            raise RuntimeFailure(f"the runtime did not answer within {timeout:.0f} s") from None
        if isinstance(result, KvDeckError):
            raise result
        return result

    def cancel(self, req_id: int = 0) -> None:
        try:
            self._send(P.CancelRequest(id=req_id))
        except RuntimeFailure:
            pass

    # ------------------------------------------------------------------ reader threads
    def _read_events(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if len(line) > P.MAX_LINE_BYTES:
                continue
            try:
                msg = P.decode(line)
            except P.ProtocolError as exc:
                log.warning("unreadable message from the runtime: %s", exc)
                continue
            self._dispatch(msg)
        code = proc.wait()
        self._finish(proc, code)

    def _dispatch(self, msg: P.Message) -> None:
        if isinstance(msg, P.LogEvent):
            native_log.log(msg.level, "%s", msg.text)
        elif isinstance(msg, P.Hello):
            self.hello = msg
            self._phase = "idle"
            self._ready.set()
        req_id = getattr(msg, "id", 0)
        with self._lock:
            pending = self._pending.get(req_id) if req_id else None
            if pending is not None and isinstance(msg, _FINAL):
                del self._pending[req_id]
        if isinstance(msg, _FINAL) and pending is not None and pending.kind in ("load", "generate", "bench"):
            self._phase = "idle"
        if pending is not None:
            if pending.on_event is not None:
                self._safe(pending.on_event, msg)
            if isinstance(msg, P.ErrorEvent):
                pending.done.put(P.exception_for(msg.kind, msg.message))
            elif isinstance(msg, _FINAL):
                pending.done.put(msg)
        if self._on_event is not None:
            self._safe(self._on_event, msg)

    def _safe(self, callback: Callable[[Any], None], msg: object) -> None:
        try:
            callback(msg)
        except Exception:
            log.exception("runtime event callback failed")

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip()
            if text.startswith(P.ABORT_PREFIX):
                raw_msg = text[len(P.ABORT_PREFIX) :].strip()
                log.error("runtime abort: %s", raw_msg)
                # "/tmp/pip-install-x/…/vendor/llama.cpp/ggml/src/ggml.c:4014: …" -> "ggml.c:4014: …"
                self._abort_message = re.sub(r"\S*[/\\]([\w.-]+:\d+:)", r"\1", raw_msg)
            elif text:
                self._stderr_tail.append(text)
                log.debug("runtime stderr: %s", text)

    def _finish(self, proc: subprocess.Popen[bytes], code: int) -> None:
        # the abort line is written to stderr just before death: let its reader catch up
        self._stderr_thread.join(timeout=2.0)
        last_error = next((line for line in reversed(self._stderr_tail) if "error" in line.lower()), "")
        outcome = describe_exit(code, self._phase, self._abort_message, last_error[:300], self._stopping)
        if self.rpc and not outcome.expected:
            from engine.runtime.workers import worker_outcome

            outcome = worker_outcome(outcome, self.rpc)
        self.outcome = self.last_outcome = outcome
        self._ready.set()
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.done.put(RuntimeFailure(outcome.sentence))
        if not outcome.expected:
            log.warning("%s", outcome.sentence)
        if self._on_event is not None:
            self._safe(self._on_event, Exited(outcome))
