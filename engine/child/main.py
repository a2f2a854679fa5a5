"""The runtime child's main loop (started as ``python -m engine.child``).

The parent writes requests to our stdin and reads events from the protocol pipe (our original
stdout). Native code may print anything to fd 1, so fd 1 is pointed at stderr before llama.cpp
loads and the protocol keeps a private duplicate. A reader thread takes requests off stdin so a
cancel reaches a running generation at once; everything that touches llama.cpp runs on the main
thread, because nothing in llama.cpp is safe against a concurrent decode.
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
from typing import BinaryIO

from engine import protocol as P


class EventWriter:
    """Serialises events from the main thread, the log callback and the progress callback."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, msg: object) -> None:
        data = P.encode(msg)  # type: ignore[arg-type]
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, OSError):
                os._exit(0)  # the parent is gone; nobody is left to talk to


class Requests:
    """Reads stdin on a thread; cancels are applied immediately, the rest queued in order."""

    def __init__(self, stream: BinaryIO) -> None:
        self.queue: queue.SimpleQueue[P.Message | None] = queue.SimpleQueue()
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._stream = stream
        self._back: collections.deque[P.Message | None] = collections.deque()
        threading.Thread(target=self._run, name="kvdeck-requests", daemon=True).start()

    def push_back(self, msg: P.Message | None) -> None:
        """Return a message taken early (engine.child.batch) so :meth:`next` gives it first."""
        self._back.append(msg)

    def next(self) -> P.Message | None:
        """The next request for the main loop: pushed-back ones first, then the queue."""
        return self._back.popleft() if self._back else self.queue.get()

    def cancel_event(self, req_id: int) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(req_id, threading.Event())

    def finished(self, req_id: int) -> None:
        with self._lock:
            self._cancel.pop(req_id, None)

    def _cancel_all(self) -> None:
        with self._lock:
            for event in self._cancel.values():
                event.set()

    def _run(self) -> None:
        for line in self._stream:
            if len(line) > P.MAX_LINE_BYTES:
                continue
            try:
                msg = P.decode(line)
            except P.ProtocolError:
                continue
            if isinstance(msg, P.CancelRequest):
                if msg.id:
                    self.cancel_event(msg.id).set()
                else:
                    self._cancel_all()
                continue
            if isinstance(msg, (P.LoadRequest, P.GenerateRequest)):
                self.cancel_event(msg.id)  # exists before the main thread starts the work
            self.queue.put(msg)
        self._cancel_all()  # stdin closed: the parent is gone
        self.queue.put(None)


def main() -> int:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    emit = EventWriter(proto)

    import logging

    from engine.child.native_log import NativeLog, install_abort_hook

    log = NativeLog(lambda level, text: emit(P.LogEvent(level=level, text=text)))
    abort_hook = install_abort_hook()  # noqa: F841  (must stay referenced)

    import llama_cpp
    import llama_cpp.llama_cpp as LL

    from engine.child.session import LlamaSession, RequestError

    session = LlamaSession(emit, log)
    emit(P.Hello(pid=os.getpid(), llama_cpp_python=llama_cpp.__version__,
                 gpu_offload=bool(LL.llama_supports_gpu_offload()),
                 system_info=LL.llama_print_system_info().decode("utf-8", "replace")))
    requests = Requests(sys.stdin.buffer)
    while True:
        msg = requests.next()
        if msg is None or isinstance(msg, P.ShutdownRequest):
            break
        req_id = getattr(msg, "id", 0)
        try:
            if isinstance(msg, P.LoadRequest):
                params = P.LoadParams(**{**msg.params,
                                         "tensor_split": tuple(msg.params.get("tensor_split", ()))})
                session.load_params = params  # type: ignore[attr-defined]  # a draft copies its context
                emit(session.load(req_id, params, requests.cancel_event(req_id)))
            elif isinstance(msg, P.GenerateRequest):
                from engine.child.batch import batch_wanted, run_batch

                if batch_wanted(session, msg):  # parallel sequences: continuous batching
                    run_batch(session, msg, requests, emit)
                else:
                    emit(session.generate(msg, requests.cancel_event(req_id)))
            elif isinstance(msg, P.TokenizeRequest):
                emit(P.Tokens(id=req_id, tokens=session.tokenize(msg.text, msg.add_special)))
            elif isinstance(msg, P.StatsRequest):
                emit(session.stats(req_id))
            elif isinstance(msg, P.BenchRequest):
                from engine.child.bench import run_bench

                emit(run_bench(session, msg, requests.cancel_event(req_id)))
            elif isinstance(msg, P.UnloadRequest):
                session.unload()
                emit(P.Unloaded(id=req_id))
            elif isinstance(msg, P.PairRequest):
                from engine.child.vocab import pair_checks

                emit(P.PairReply(id=req_id, checks=[vars(c) for c in pair_checks(msg.target, msg.draft)]))
            elif isinstance(msg, P.PrecisionRequest):
                from engine.child.precision import run_precision

                emit(run_precision(session, msg, emit, requests.cancel_event(req_id)))
            elif isinstance(msg, P.LoadDraftRequest):
                from engine.child.speculative import load_draft

                emit(load_draft(session, msg, requests.cancel_event(req_id)))
            elif isinstance(msg, P.UnloadDraftRequest):
                from engine.child.speculative import unload_draft

                unload_draft(session)
                emit(P.DraftUnloaded(id=req_id))
        except RequestError as exc:
            emit(P.ErrorEvent(id=req_id, kind=exc.kind, message=str(exc)))
        except Exception as exc:  # a bug or bad parameters: report it and stay alive
            logging.getLogger(__name__).exception("request failed")
            emit(P.ErrorEvent(id=req_id, kind="runtime", message=f"{type(exc).__name__}: {exc}"))
        finally:
            requests.finished(req_id)
    session.unload()
    return 0
