"""The runtime host: the typed requests a caller sends to the llama.cpp child.

:class:`RuntimeHost` is what the window, the CLI and the server hold: one method per request
(load, generate, drafts, tokenize, stats, bench, pairing, precision), each building its protocol
message and, for the blocking ones, waiting for the final event. The process itself (starting
it, the JSON-lines channel, its death as a :class:`ProcessOutcome`) is
:class:`engine.runtime.process.RuntimeProcess`, which this class extends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.runtime.process import RuntimeProcess


def _generate_request(
    prompt: str,
    max_tokens: int,
    sampling: SamplingParams | None,
    no_empty: bool,
    draft: str,
    draft_max: int,
    json_schema: str = "",
) -> Callable[[int], P.Message]:
    """The one builder of a ``GenerateRequest`` (blocking or not); a JSON-schema reply may be
    empty, since the grammar decides what it may hold."""
    s = (sampling or SamplingParams()).validated()
    return lambda i: P.GenerateRequest(
        id=i,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=s.to_dict(),
        no_empty=no_empty and not json_schema,
        draft=draft,
        draft_max=draft_max,
        json_schema=json_schema,
    )


class RuntimeHost(RuntimeProcess):
    """One runtime child and the requests it answers. Thread-safe.

    ``with RuntimeHost() as host:`` starts the child, waits until it is ready and always stops
    it (see :class:`RuntimeProcess`).
    """

    def submit_load(self, params: P.LoadParams, on_event: Callable[[P.Message], None] | None = None) -> int:
        return self.submit("load", lambda i: P.LoadRequest(id=i, params=params.to_dict()), on_event)

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
        build = _generate_request(prompt, max_tokens, sampling, no_empty, draft, draft_max)
        return self.submit("generate", build, on_event)

    def remote_memory(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Free and total memory of the workers' devices, over the runtime's own connections
        (a worker this runtime holds answers nobody else); waits behind a running request."""
        reply = self.call("remote_memory", lambda i: P.RemoteMemoryRequest(id=i), timeout)
        return reply.devices  # type: ignore[attr-defined]

    def load(
        self,
        params: P.LoadParams,
        on_event: Callable[[P.Message], None] | None = None,
        timeout: float | None = 900,
    ) -> P.Loaded:
        return self.call("load", lambda i: P.LoadRequest(id=i, params=params.to_dict()), timeout, on_event)  # type: ignore[return-value]

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
        build = _generate_request(prompt, max_tokens, sampling, no_empty, draft, draft_max, json_schema)
        return self.call("generate", build, timeout, on_event)  # type: ignore[return-value]

    def submit_load_draft(
        self, path: str, on_event: Callable[[P.Message], None] | None = None, **options: Any
    ) -> int:
        return self.submit("load_draft", lambda i: P.LoadDraftRequest(id=i, path=path, **options), on_event)

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
        return self.call(
            "load_draft", lambda i: P.LoadDraftRequest(id=i, path=path, **options), timeout, on_event
        )  # type: ignore[return-value]

    def unload_draft(self, timeout: float = 60) -> None:
        self.call("unload_draft", lambda i: P.UnloadDraftRequest(id=i), timeout)

    def submit_unload_draft(self) -> int:
        return self.submit("unload_draft", lambda i: P.UnloadDraftRequest(id=i))

    def tokenize(self, text: str, add_special: bool = True, timeout: float = 60) -> list[int]:
        reply = self.call(
            "tokenize", lambda i: P.TokenizeRequest(id=i, text=text, add_special=add_special), timeout
        )
        return reply.tokens  # type: ignore[attr-defined]

    def stats(self, timeout: float = 60) -> P.Stats:
        return self.call("stats", lambda i: P.StatsRequest(id=i), timeout)  # type: ignore[return-value]

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
        return self.call(
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
        reply = self.call("pair", lambda i: P.PairRequest(id=i, target=target, draft=draft), timeout)
        return reply.checks  # type: ignore[attr-defined]

    def unload(self, timeout: float = 60) -> None:
        self.call("unload", lambda i: P.UnloadRequest(id=i), timeout)

    def load_for_precision(self, path: str, n_gpu_layers: int = -1, n_threads: int = 0) -> P.Loaded:
        """Load a model for :meth:`precision`, which makes its own contexts: the model's own
        is the smallest that loads (256 cells), so it costs next to nothing beside them."""
        settings = PlanSettings(n_ctx=256, n_gpu_layers=n_gpu_layers)
        return self.load(P.LoadParams(path=path, settings=settings, n_threads=n_threads))

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
            return self.call(
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
