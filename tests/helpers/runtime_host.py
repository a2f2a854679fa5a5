"""The one way tests run a real runtime child: started, ready, a model loaded if asked, and
always stopped, even when a step in between fails (a leaked child would outlive the test run)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine import protocol as P
from engine.runtime.host import RuntimeHost


@contextmanager
def running_host(
    params: P.LoadParams | None = None, **host_kwargs: Any
) -> Iterator[tuple[RuntimeHost, P.Loaded | None]]:
    with RuntimeHost(**host_kwargs) as host:
        yield host, (host.load(params) if params is not None else None)


def cancelled_mid_reply(host: RuntimeHost, prompt: str, timeout: float = 120, **generate: Any) -> P.Done:
    """Generate ``prompt`` on a thread, cancel the request once its first text has arrived (a
    reply that is really running), and return the ``Done`` it ended with."""
    seen = threading.Event()
    result: list[P.Done] = []

    def on_event(msg: P.Message) -> None:
        if isinstance(msg, P.Delta):
            seen.set()

    t = threading.Thread(target=lambda: result.append(host.generate(prompt, on_event=on_event, **generate)))
    t.start()
    assert seen.wait(timeout), "no text before the timeout"
    host.cancel(0)
    t.join(timeout)
    assert result, "the generation did not end after its cancel"
    return result[0]
