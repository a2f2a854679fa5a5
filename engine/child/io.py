"""The child's two ends of the pipe: events out to the parent, requests in from it.

Its own module so that the batch loop (``engine.child.batch``), which polls requests between
decode steps, does not import the main loop that owns it.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from engine import protocol as P

#: What every generation path sends events through (the EventWriter's write, or a test's list).
Emit = Callable[[object], None]

#: How often streamed text goes to the parent: one Delta per sequence at most every 20 ms, not
#: one per token, for every decoding path (plain, batched, speculative).
DELTA_INTERVAL_S = 0.02


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
