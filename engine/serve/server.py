"""The local OpenAI-compatible API server: Starlette + uvicorn in front of a RuntimeHost.

Other programs (editors, agents, scripts) talk to the model the GUI or ``kvdeck serve`` has
loaded, through the API they already speak. llama.cpp stays in the runtime child: this module
only turns HTTP requests into GenerateRequests (``serve=True``, so the child's continuous
batching loop, engine.child.batch, runs them in parallel sequences) and the child's events back
into JSON or server-sent events. It never imports llama.cpp.

Load is bounded twice: the child runs at most one request per sequence (slot) and keeps the
rest waiting in order; here, at most ``slots + max_queue`` requests are accepted at once and
the next one is answered 429 at once rather than left hanging. A client that goes away
mid-request is noticed (Starlette's disconnect listener, or a poll while the reply is not
streaming yet) and its request cancelled, which frees its sequence on the child's next step.

Security, because a local port is reachable by every program and web page on the machine:
binds 127.0.0.1 unless told otherwise and then requires an API key; on loopback the Host header
must name loopback (a DNS-rebinding page cannot talk to us); POST bodies must be JSON (a form
or text/plain post from a page would skip CORS preflight) and at most 1 MiB; prompts longer
than a sequence's context are refused by the child; no CORS unless origins are given; every
error is OpenAI's ``{"error": {...}}`` JSON and never a traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import protocol as P
from engine.core.errors import KvDeckError
from engine.core.memory_types import PlanSettings
from engine.core.sampling import RANDOM_SEED
from engine.runtime.host import RuntimeHost
from engine.serve import extras
from engine.serve.calls import REFUSALS, Call, Gone, Once, model_id, refusal_of
from engine.serve.openai_api import (
    ApiError,
    Job,
    error_body,
    parse_chat,
    parse_completion,
    parse_json,
)
from engine.serve.prompts import build as build_prompt
from engine.serve.replies import full_response, stream_events
from engine.serve.security import (
    LOOPBACK_NAMES,
    Guard,
    ServerConfig,
    check_config,
    is_loopback,
)
from engine.serve.shapes import DraftTally

_refusal = refusal_of  # the name engine.serve.server used before engine.serve.calls existed

__all__ = [
    "REFUSALS",
    "ApiServer",
    "ServedModel",
    "ServerConfig",
    "check_config",
    "create_app",
    "is_loopback",
    "model_id",
]

log = logging.getLogger("kvdeck.server")


@dataclass(frozen=True)
class ServedModel:
    """How the server reaches the model: callables, so the GUI can reload or restart under it."""

    host: Callable[[], RuntimeHost | None]
    loaded: Callable[[], P.Loaded | None]
    slots: Callable[[], int]
    alias: str = ""
    #: For /v1/kvdeck/memory: the settings the model was loaded with (for the plan) and the
    #: child's latest per-sequence occupancy (P.Slots); None when the front end has neither.
    settings: Callable[[], PlanSettings | None] = lambda: None
    slots_state: Callable[[], P.Slots | None] = lambda: None
    #: Drafting per sequence (engine.child.batch_spec): "mtp" (the model's own heads), "model"
    #: (a loaded Gemma 4 assistant, ``draft_path``) or "" none; at most ``draft_max`` tokens per round.
    draft: str = ""
    draft_max: int = 8
    draft_path: str = ""


class Api:
    """The routes; one instance per server, used only on uvicorn's event loop thread."""

    def __init__(self, model: ServedModel, config: ServerConfig) -> None:
        self.model, self.config = model, config
        self.in_flight = 0
        self.telemetry: Any = None  # engine.runtime.telemetry.Telemetry, made on first use
        self.drafted = DraftTally()  # every drafted reply's counts, for /v1/kvdeck/memory

    # ------------------------------------------------------------------ helpers
    def _ready(self) -> tuple[RuntimeHost, P.Loaded]:
        host, loaded = self.model.host(), self.model.loaded()
        if host is None or not host.running or loaded is None:
            raise ApiError(503, "no model is loaded right now", "server_error", code="model_not_loaded")
        return host, loaded

    def _ids(self, loaded: P.Loaded) -> list[str]:
        ids = [model_id(loaded)]
        return ids + [self.model.alias] if self.model.alias else ids

    async def _body(self, request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(
                415,
                "the request body must be JSON (Content-Type: application/json)",
                code="unsupported_media_type",
            )
        size, parts = 0, []
        async for part in request.stream():
            size += len(part)
            if size > self.config.max_body_bytes:
                raise ApiError(
                    413,
                    f"the request body is larger than {self.config.max_body_bytes} bytes",
                    code="request_too_large",
                )
            parts.append(part)
        return parse_json(b"".join(parts))

    def _enter(self, n: int = 1) -> None:
        if self.in_flight + n > max(1, self.model.slots()) + self.config.max_queue:
            raise ApiError(
                429,
                "the server is busy: every sequence is in use and the queue is full; retry shortly",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.in_flight += n

    def _leave(self, n: int = 1) -> None:
        self.in_flight -= n

    async def _start(self, job: Job) -> tuple[Call, str]:
        """Build the prompt and submit one runtime request per choice. Any ``model`` name is
        answered by the loaded model (OpenAI clients send their own names)."""
        host, loaded = self._ready()
        measure = (lambda text: len(host.tokenize(text, timeout=60))) if self.config.overflow else None
        built = await run_in_threadpool(
            build_prompt, loaded, job, overflow=self.config.overflow, measure=measure
        )
        call = Call(host, self.drafted.add)
        seed = int(job.sampling.get("seed", RANDOM_SEED))
        for i in range(job.n):
            sampling = dict(job.sampling)
            if i and seed != RANDOM_SEED:  # n choices of one fixed seed must still differ
                sampling["seed"] = (seed + i) % RANDOM_SEED
            call.submit(
                lambda rid, sampling=sampling: P.GenerateRequest(  # type: ignore[misc]
                    id=rid,
                    prompt=built.prompt,
                    max_tokens=job.max_tokens or loaded.n_ctx,
                    sampling=sampling,
                    stream=job.stream,
                    stop=list(job.stop),
                    serve=True,
                    json_schema=built.json_schema,
                    logprobs=job.logprobs,
                    no_empty=not built.json_schema,
                    draft=self.model.draft,
                    draft_max=self.model.draft_max,
                )
            )
        return call, model_id(loaded)

    # ------------------------------------------------------------------ routes
    async def health(self, request: Request) -> Response:
        host, loaded = self.model.host(), self.model.loaded()
        ok = host is not None and host.running and loaded is not None
        data = {
            "status": "ok" if ok else "unavailable",
            "model": model_id(loaded) if loaded else None,
            "slots": self.model.slots(),
            "in_flight": self.in_flight,
        }
        return JSONResponse(data, 200 if ok else 503)

    async def models(self, request: Request) -> Response:
        """The loaded model (and its alias). Any other name a client asks for is answered by the
        same model, so retrieving one returns the loaded model rather than 404."""
        _, loaded = self._ready()
        created = int(Path(loaded.path).stat().st_mtime) if Path(loaded.path).exists() else 0
        note = "this server has one model; requests naming any model are answered by it"
        data = [
            {"id": i, "object": "model", "created": created, "owned_by": "kvdeck", "kvdeck_note": note}
            for i in self._ids(loaded)
        ]
        wanted = request.path_params.get("model")
        if wanted is not None:
            match = [d for d in data if d["id"] == wanted]
            return JSONResponse(match[0] if match else data[0])
        return JSONResponse({"object": "list", "data": data})

    async def embeddings(self, request: Request) -> Response:
        return await extras.embeddings(self, request)

    async def tokenize(self, request: Request) -> Response:
        return await extras.tokenize(self, request)

    async def detokenize(self, request: Request) -> Response:
        return await extras.detokenize(self, request)

    async def memory(self, request: Request) -> Response:
        return await extras.memory(self, request)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat(await self._body(request), self.model.loaded()))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion(await self._body(request), self.model.loaded()))

    async def _generate(self, request: Request, job: Job) -> Response:
        self._enter(job.n)
        call: Call | None = None
        streaming = False
        try:
            call, name = await self._start(job)
            early: list[P.Message] = []  # each choice's first event: a refusal is a real 4xx
            firsts: set[int] = set()
            while len(firsts) < job.n:
                msg = await call.next(request)
                if isinstance(msg, P.ErrorEvent):
                    raise refusal_of(msg)
                firsts.add(msg.id)  # type: ignore[attr-defined]
                early.append(msg)
            if job.stream:
                streaming = True
                done = Once(lambda: (call.cancel(), self._leave(job.n)))  # type: ignore[union-attr]
                return StreamingResponse(
                    stream_events(job, call, name, early, done),
                    media_type="text/event-stream",
                    background=BackgroundTask(done),
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            results: dict[int, P.Done] = {}
            while len(results) < job.n:
                msg = early.pop(0) if early else await call.next(request)
                if isinstance(msg, P.ErrorEvent):
                    raise refusal_of(msg)
                if isinstance(msg, P.Done):
                    results[call.index(msg)] = msg
            return JSONResponse(full_response(job, name, [results[i] for i in range(job.n)]))
        except Gone:
            return Response(status_code=499)
        finally:
            if not streaming:
                if call is not None:
                    call.cancel()
                self._leave(job.n)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(f"{text}: {request.method} {request.url.path}"), exc.status_code)


async def _bug(request: Request, exc: Exception) -> Response:
    log.exception("API request failed", exc_info=exc)
    return JSONResponse(error_body(f"internal error ({type(exc).__name__})", "server_error"), 500)


def create_app(model: ServedModel, config: ServerConfig) -> Starlette:
    api = Api(model, config)
    routes = [
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/models/{model:path}", api.models),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/v1/kvdeck/memory", api.memory),
    ]
    hosts = (LOOPBACK_NAMES | {config.host.strip("[]").lower()}) if is_loopback(config.host) else None
    middleware = []
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
            )
        )
    middleware.append(
        Middleware(
            Guard,
            api_key=config.api_key,
            hosts=hosts,  # type: ignore[arg-type]
            max_body=config.max_body_bytes,
        )
    )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _bug},
    )
    app.state.api = api
    return app


class ApiServer:
    """uvicorn on a background thread, so neither the GUI thread nor the CLI's waits on it."""

    def __init__(self, model: ServedModel, config: ServerConfig) -> None:
        check_config(config)
        self.config = config
        self.app = create_app(model, config)
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> str:
        """Bind (a taken port fails here, in one sentence), serve, return the base URL."""
        import uvicorn

        host = self.config.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.config.port))
        except OSError as exc:
            sock.close()
            raise KvDeckError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            limit_concurrency=256,
            timeout_keep_alive=5,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="kvdeck-api", daemon=True
        )
        self._thread.start()
        end = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                self.stop()
                raise KvDeckError(f"the API server did not start on {self.config.host}:{port}")
            time.sleep(0.02)
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{port}"
        return self.url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 6.0) -> None:
        """Stop accepting, cancel what runs (streams end), and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
