"""The child's two ends of the pipe: events out to the parent, requests in from it.

Its own module so that the batch loop (``engine.child.batch``), which polls requests between
decode steps, does not import the main loop that owns it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from engine import protocol as P

#: What every generation path sends events through (the EventWriter's write, or a test's list).
Emit = Callable[[object], None]

#: How often streamed text goes to the parent: one Delta per sequence at most every 20 ms, not
#: one per token, for every decoding path (plain, batched, speculative).
DELTA_INTERVAL_S = 0.02


class EventWriter:
    """Serialises events from the main thread, the log callback and the progress callback.

    Every event is one line and, normally, one write to the pipe: each write wakes the parent's
    reader, and with sixteen streaming sequences that cost more than everything else the batch
    loop does between decodes (35 µs an event on a shared 2-core machine). :meth:`held`
    gathers the main thread's events of one batch step into a single write instead; events from
    other threads (llama.cpp's log) are never held back.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._held: list[bytes] | None = None
        self._holder = 0

    def __call__(self, msg: object) -> None:
        data = P.encode(msg)  # type: ignore[arg-type]
        # llama.cpp's log lines are never held: the last ones before an abort must get out
        if (
            self._held is not None
            and threading.get_ident() == self._holder
            and not isinstance(msg, P.LogEvent)
        ):
            self._held.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, OSError):
                os._exit(0)  # the parent is gone; nobody is left to talk to

    def flush_held(self) -> None:
        """Write the holding thread's events so far and go on holding: the batch loop writes a
        step's events while the device runs the next step (engine.child.batch)."""
        if self._held and threading.get_ident() == self._holder:
            data, self._held = b"".join(self._held), []
            self._write(data)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """This thread's events inside the block go out in one write at its end, in order (one
        holding thread at a time: the batch loop's; a nested block adds to the outer one)."""
        if self._held is not None:
            yield
            return
        self._holder, self._held = threading.get_ident(), []
        try:
            yield
        finally:
            data, self._held = b"".join(self._held), None
            if data:
                self._write(data)


def flush_held(emit: Emit) -> None:
    """Write what the calling thread holds now and keep holding (:meth:`EventWriter.flush_held`)."""
    if isinstance(emit, EventWriter):
        emit.flush_held()


def held(emit: Emit) -> contextlib.AbstractContextManager[None]:
    """``emit``'s events inside the block in one write where it can (:meth:`EventWriter.held`);
    any other sink (a test's list) gets them as they come."""
    return emit.held() if isinstance(emit, EventWriter) else contextlib.nullcontext()


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
