"""The KV precision check's runtime: a second child of its own, driven from a background worker.

The check needs the model loaded a second time (the chat's runtime keeps its model and cache
untouched), so a :class:`PrecisionJob` starts its own runtime child on a worker of
``app.background`` and asks it for one ``precision`` request per cache type; the child keeps
the f32 reference continuations between requests, so they are generated once. Its news
(progress, one result per type, the end) reach the GUI thread as the worker's signals; the
view is ``app.memory.precision_view``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from PySide6.QtCore import QObject

from app.background import Report, Worker, run_in_background
from engine.core.errors import KvDeckError
from engine.runtime.host import RuntimeHost

Pair = tuple[str, str]  # (type_k, type_v)


class PrecisionJob:
    """One background run: its own runtime child, one precision request per K/V pair.

    :meth:`start` runs it on a :class:`~app.background.Worker`; the view hears ``("progress",
    per_mille, label)`` and ``("result", PrecisionResult)`` news, then the worker's result (None)
    or error, all on the GUI thread. :meth:`stop` may be called from the GUI thread at any time.
    """

    def __init__(
        self,
        path: str,
        pairs: list[Pair],
        prompts: list[str],
        n_tokens: int,
        n_gpu_layers: int = -1,
        n_threads: int = 0,
    ) -> None:
        self.path, self.pairs, self.prompts, self.n_tokens = path, pairs, prompts, n_tokens
        self.n_gpu_layers, self.n_threads = n_gpu_layers, n_threads
        self._host: RuntimeHost | None = None
        self._stopped = threading.Event()
        self.worker: Worker | None = None

    def start(
        self, parent: QObject, on_news: Callable[[tuple], None], on_done: Callable[[str], None]
    ) -> None:
        """Run on a worker owned by ``parent``; ``on_done("")`` or ``on_done(error sentence)``."""
        self.worker = run_in_background(
            self._run,
            parent=parent,
            name="kvdeck-precision",
            on_progress=on_news,
            on_result=lambda _none: on_done(""),
            on_error=lambda exc: on_done(_error_text(exc)),
        )

    def stop(self) -> None:
        """Stop at once: the child is ours alone, so killing it loses nothing."""
        self._stopped.set()
        host = self._host
        if host is not None:
            host.kill()

    def wait(self, timeout: float = 10.0) -> bool:
        return self.worker is None or self.worker.wait(timeout)

    def _run(self, report: Report) -> None:
        """The worker thread: start a child, load the model, one request per pair, always stop.

        The host is known (``_host``) before its child starts, so :meth:`stop` on the GUI thread
        can kill it at any moment, even while it starts; ``with`` then stops what is left."""
        host = self._host = RuntimeHost()
        if self._stopped.is_set():
            return
        try:
            with host:
                if not self._stopped.is_set():
                    self._check(host, report)
        except KvDeckError:
            if not self._stopped.is_set():
                raise
            # stopped: the killed child's failure is the stop itself, not news

    def _check(self, host: RuntimeHost, report: Report) -> None:
        report(("progress", 0, "loading the model…"))
        host.load_for_precision(self.path, self.n_gpu_layers, self.n_threads)
        n = len(self.pairs)
        for i, (tk, tv) in enumerate(self.pairs):
            label = f"checking K {tk} / V {tv} ({i + 1} of {n})…"

            def on_progress(done: int, total: int, i: int = i, label: str = label) -> None:
                report(("progress", int(1000 * (i + done / max(1, total)) / n), label))

            on_progress(0, 1)
            report(
                (
                    "result",
                    host.precision(
                        tk, tv, self.prompts, self.n_tokens, flash_attn="on", on_progress=on_progress
                    ),
                )
            )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KvDeckError):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"  # a bug: say so, in the status line
