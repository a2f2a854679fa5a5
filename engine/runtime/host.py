"""The runtime host: starts the llama.cpp child process and talks to it.

llama.cpp aborts the whole process on asserts, CUDA errors and a few bad inputs, and device
memory is only reliably returned when a process exits. So the model lives in a child process;
the host turns its events into callbacks and blocking helpers, and its death into a typed
:class:`ProcessOutcome` with a sentence a user can read. Nothing here imports llama.cpp.
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
from typing import Any

from engine import protocol as P
from engine.core.errors import KvDeckError, RuntimeFailure
from engine.core.sampling import SamplingParams
from engine.runtime.outcome import Exited, ProcessOutcome, child_command, describe_exit

log = logging.getLogger("kvdeck.runtime")
native_log = logging.getLogger("kvdeck.llama")


class _Pending:
    def __init__(self, kind: str, on_event: Callable[[P.Message], None] | None) -> None:
        self.kind = kind
        self.on_event = on_event
        self.done: queue.SimpleQueue[P.Message | KvDeckError] = queue.SimpleQueue()


_FINAL = (P.Loaded, P.Done, P.Tokens, P.Stats, P.Unloaded, P.ErrorEvent)
_FINAL += (P.PrecisionResult,)  # KV precision check (engine.child.precision)
_FINAL += (P.BenchResult,)  # speed benchmark (engine.child.bench)
_FINAL += (P.PairReply,)  # draft compatibility (engine.plan.pairing)
_FINAL += (P.DraftLoaded, P.DraftUnloaded)  # speculative decoding (engine.child.speculative)
_FINAL += (P.Detokenized, P.Embeddings)  # the API server's /detokenize and /v1/embeddings


class RuntimeHost:
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

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RuntimeHost:
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

    def submit_load(self, params: P.LoadParams, on_event: Callable[[P.Message], None] | None = None) -> int:
        return self._submit("load", lambda i: P.LoadRequest(id=i, params=params.to_dict()), on_event)[0]

    def submit_generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 512,
        sampling: SamplingParams | None = None,
        no_empty: bool = True,
        on_event: Callable[[P.Message], None] | None = None,
        draft: str = "",
        draft_max: int = 8,
    ) -> int:
        s = (sampling or SamplingParams()).validated()
        return self._submit(
            "generate",
            lambda i: P.GenerateRequest(
                id=i,
                prompt=prompt,
                max_tokens=max_tokens,
                sampling=s.to_dict(),
                no_empty=no_empty,
                draft=draft,
                draft_max=draft_max,
            ),
            on_event,
        )[0]

    def submit(
        self,
        kind: str,
        build: Callable[[int], P.Message],
        on_event: Callable[[P.Message], None] | None = None,
    ) -> int:
        """Send any request built from its new id; its events go to ``on_event`` on the reader
        thread. For callers that need fields the helpers do not offer (engine.serve.server)."""
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
        return self._call(kind, build, timeout, on_event)

    def cancel(self, req_id: int = 0) -> None:
        try:
            self._send(P.CancelRequest(id=req_id))
        except RuntimeFailure:
            pass

    def _call(
        self,
        kind: str,
        build: Callable[[int], P.Message],
        timeout: float | None,
        on_event: Callable[[P.Message], None] | None = None,
    ) -> P.Message:
        req_id, pending = self._submit(kind, build, on_event)
        try:
            result = pending.done.get(timeout=timeout)
        except queue.Empty:
            self.cancel(req_id)
            raise RuntimeFailure(f"the runtime did not answer within {timeout:.0f} s") from None
        if isinstance(result, KvDeckError):
            raise result
        return result

    def load(
        self,
        params: P.LoadParams,
        on_event: Callable[[P.Message], None] | None = None,
        timeout: float | None = 900,
    ) -> P.Loaded:
        return self._call("load", lambda i: P.LoadRequest(id=i, params=params.to_dict()), timeout, on_event)  # type: ignore[return-value]

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 512,
        sampling: SamplingParams | None = None,
        no_empty: bool = True,
        on_event: Callable[[P.Message], None] | None = None,
        timeout: float | None = None,
        draft: str = "",
        draft_max: int = 8,
        json_schema: str = "",
    ) -> P.Done:
        """``draft``: "" plain decoding, "model" the loaded draft, "lookup" n-gram drafting;
        ``json_schema`` (JSON text): the reply is constrained to match it (engine.child.grammar)."""
        s = (sampling or SamplingParams()).validated()
        return self._call(
            "generate",
            lambda i: P.GenerateRequest(
                id=i,
                prompt=prompt,
                max_tokens=max_tokens,
                sampling=s.to_dict(),
                no_empty=no_empty and not json_schema,
                draft=draft,
                draft_max=draft_max,
                json_schema=json_schema,
            ),
            timeout,
            on_event,
        )  # type: ignore[return-value]

    def submit_load_draft(
        self, path: str, on_event: Callable[[P.Message], None] | None = None, **options: Any
    ) -> int:
        return self._submit("load_draft", lambda i: P.LoadDraftRequest(id=i, path=path, **options), on_event)[
            0
        ]

    def load_draft(
        self,
        path: str,
        *,
        on_event: Callable[[P.Message], None] | None = None,
        timeout: float | None = 900,
        **options: Any,
    ) -> P.DraftLoaded:
        """A draft beside the loaded target, with the target's context (options: type_k, type_v,
        n_gpu_layers, flash_attn); an incompatible pair is refused with the rules in words."""
        return self._call(
            "load_draft", lambda i: P.LoadDraftRequest(id=i, path=path, **options), timeout, on_event
        )  # type: ignore[return-value]

    def unload_draft(self, timeout: float = 60) -> None:
        self._call("unload_draft", lambda i: P.UnloadDraftRequest(id=i), timeout)

    def submit_unload_draft(self) -> int:
        return self._submit("unload_draft", lambda i: P.UnloadDraftRequest(id=i), None)[0]

    def tokenize(self, text: str, add_special: bool = True, timeout: float = 60) -> list[int]:
        reply = self._call(
            "tokenize", lambda i: P.TokenizeRequest(id=i, text=text, add_special=add_special), timeout
        )
        return reply.tokens  # type: ignore[attr-defined]

    def stats(self, timeout: float = 60) -> P.Stats:
        return self._call("stats", lambda i: P.StatsRequest(id=i), timeout)  # type: ignore[return-value]

    def bench(
        self,
        n_prompt: int = 512,
        n_gen: int = 128,
        depth: int = 0,
        repetitions: int = 5,
        *,
        sampling: SamplingParams | None = None,
        sampler: str = "auto",
        n_threads: int = 0,
        timeout: float | None = None,
    ) -> P.BenchResult:
        """llama-bench-style pp/tg on the loaded model (``engine.child.bench``); sampling None: greedy."""
        s = sampling.validated().to_dict() if sampling else {}
        return self._call(
            "bench",
            lambda i: P.BenchRequest(
                id=i,
                n_prompt=n_prompt,
                n_gen=n_gen,
                depth=depth,
                repetitions=repetitions,
                sampling=s,
                sampler=sampler,
                n_threads=n_threads,
            ),
            timeout,
        )  # type: ignore[return-value]

    def pair(self, target: str, draft: str, timeout: float = 120) -> list[dict[str, Any]]:
        """llama.cpp's draft-compatibility rules on the two vocabularies, each with a verdict."""
        reply = self._call("pair", lambda i: P.PairRequest(id=i, target=target, draft=draft), timeout)
        return reply.checks  # type: ignore[attr-defined]

    def unload(self, timeout: float = 60) -> None:
        self._call("unload", lambda i: P.UnloadRequest(id=i), timeout)

    def precision(
        self,
        type_k: str,
        type_v: str,
        prompts: list[str],
        n_tokens: int = 30,
        *,
        flash_attn: str = "on",
        n_ctx: int = 0,
        reference_flash_attn: str = "off",
        on_progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> P.PrecisionResult:
        """Blocking KV precision check on the loaded model; ``on_progress(done, total)`` is
        called on the reader thread. Cancel it with :meth:`cancel` (id 0) from another thread."""

        def on_event(msg: P.Message) -> None:
            if on_progress is not None and isinstance(msg, P.PrecisionProgress):
                on_progress(msg.done, msg.total)

        self._phase = "precision"
        try:
            return self._call(
                "precision",
                lambda i: P.PrecisionRequest(  # type: ignore[return-value]
                    id=i,
                    type_k=type_k,
                    type_v=type_v,
                    prompts=list(prompts),
                    n_tokens=n_tokens,
                    flash_attn=flash_attn,
                    n_ctx=n_ctx,
                    reference_flash_attn=reference_flash_attn,
                ),
                timeout,
                on_event,
            )
        finally:
            if self._phase == "precision":
                self._phase = "idle"

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
        self.outcome = outcome
        self._ready.set()
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.done.put(RuntimeFailure(outcome.sentence))
        if not outcome.expected:
            log.warning("%s", outcome.sentence)
        if self._on_event is not None:
            self._safe(self._on_event, Exited(outcome))
