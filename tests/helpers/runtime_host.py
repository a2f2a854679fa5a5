"""The one way tests run a real runtime child: started, ready, a model loaded if asked, and
always stopped, even when a step in between fails (a leaked child would outlive the test run)."""

from __future__ import annotations

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
