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

import asyncio
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import protocol as P
from engine.protocol.errors import ErrorKind
from engine.core.errors import KvDeckError, TemplateError
from engine.runtime.host import RuntimeHost
from engine.serve.openai_api import (FINISH, ApiError, Job, chunk, error_body, new_id,
                               parse_chat, parse_completion, parse_json, response, split_system,
                               usage)
from engine.serve.security import LOOPBACK_NAMES, Guard, ServerConfig, check_config, is_loopback

__all__ = ["ApiServer", "ServedModel", "ServerConfig", "check_config", "create_app", "is_loopback",
           "model_id"]

log = logging.getLogger("kvdeck.server")


@dataclass(frozen=True)
class ServedModel:
    """How the server reaches the model: callables, so the GUI can reload or restart under it."""

    host: Callable[[], RuntimeHost | None]
    loaded: Callable[[], P.Loaded | None]
    slots: Callable[[], int]
    alias: str = ""



def model_id(loaded: P.Loaded) -> str:
    return Path(loaded.path).name.removesuffix(".gguf")



class _Gone(Exception):
    """The client disconnected before its reply was complete."""


class _Call:
    """One request's events, carried from the host's reader thread into the event loop."""

    def __init__(self, host: RuntimeHost) -> None:
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[P.Message] = asyncio.Queue()
        self.req_id = 0
        self.ended = False

    def on_event(self, msg: P.Message) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        except RuntimeError:  # the event loop is closed: the server stopped
            pass

    async def next(self, request: Request | None = None) -> P.Message:
        while True:
            try:
                msg = await asyncio.wait_for(self.queue.get(), 0.5)
            except asyncio.TimeoutError:
                if not self.host.running:
                    self.ended = True
                    why = self.host.outcome.sentence if self.host.outcome else "the runtime stopped"
                    raise ApiError(503, why, "server_error", code="runtime_stopped") from None
                if request is not None and await request.is_disconnected():
                    raise _Gone() from None
                continue
            if isinstance(msg, (P.Done, P.ErrorEvent)):
                self.ended = True
            return msg

    def cancel(self) -> None:
        if self.req_id and not self.ended:
            self.ended = True
            self.host.cancel(self.req_id)


#: One HTTP answer per kind of refusal: (status, OpenAI error type, param, code, fixed message).
#: STATE is 503: the server only runs with a model loaded, so "no model" (or no draft) means it
#: is being replaced or stopped right now: a passing condition a client may retry, not a
#: conflict the client caused (409). MODEL is 500: a client cannot name a file here, so a model
#: that fails is the server's fault.
REFUSALS: dict[ErrorKind, tuple[int, str, str | None, str | None, str | None]] = {
    ErrorKind.CONTEXT: (400, "invalid_request_error", "messages", "context_length_exceeded", None),
    ErrorKind.PARAMS: (400, "invalid_request_error", None, None, None),
    ErrorKind.CANCELLED: (503, "server_error", None, "cancelled",
                          "the request was cancelled (the model is being replaced or stopped)"),
    ErrorKind.STATE: (503, "server_error", None, "state", None),
    ErrorKind.MODEL: (500, "server_error", None, "model", None),
    ErrorKind.RUNTIME: (500, "server_error", None, "runtime", None),
}


def _refusal(msg: P.ErrorEvent) -> ApiError:
    status, type_, param, code, text = REFUSALS[ErrorKind.parse(msg.kind)]
    return ApiError(status, text or msg.message, type_, param=param, code=code)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Api:
    """The routes; one instance per server, used only on uvicorn's event loop thread."""

    def __init__(self, model: ServedModel, config: ServerConfig) -> None:
        self.model, self.config = model, config
        self.in_flight = 0

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
            raise ApiError(415, "the request body must be JSON (Content-Type: application/json)",
                           code="unsupported_media_type")
        size, parts = 0, []
        async for part in request.stream():
            size += len(part)
            if size > self.config.max_body_bytes:
                raise ApiError(413, f"the request body is larger than {self.config.max_body_bytes} bytes",
                               code="request_too_large")
            parts.append(part)
        return parse_json(b"".join(parts))

    def _enter(self) -> None:
        if self.in_flight >= max(1, self.model.slots()) + self.config.max_queue:
            raise ApiError(429, "the server is busy: every sequence is in use and the queue is full; "
                                "retry shortly", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        self.in_flight += 1

    @staticmethod
    def _prompt(loaded: P.Loaded, job: Job) -> str:
        if job.kind == "completion":
            return job.prompt
        from engine.chat.conversation import conversation_prompt

        system, turns = split_system(job.messages)
        try:
            return conversation_prompt(loaded, system, turns).text
        except TemplateError as exc:
            raise ApiError(400, str(exc), param="messages", code="template_error") from None

    async def _start(self, job: Job) -> tuple[_Call, str]:
        host, loaded = self._ready()
        if job.model not in self._ids(loaded):
            raise ApiError(404, f"the model {job.model!r} does not exist; this server has "
                                f"{model_id(loaded)!r}", param="model", code="model_not_found")
        prompt = await run_in_threadpool(self._prompt, loaded, job)
        call = _Call(host)
        build = lambda i: P.GenerateRequest(  # noqa: E731
            id=i, prompt=prompt, max_tokens=job.max_tokens or loaded.n_ctx, sampling=job.sampling,
            stream=job.stream, stop=list(job.stop), serve=True)
        try:
            call.req_id = host.submit("generate", build, call.on_event)
        except KvDeckError as exc:
            raise ApiError(503, str(exc), "server_error", code="runtime_stopped") from None
        return call, job.model

    # ------------------------------------------------------------------ routes
    async def health(self, request: Request) -> Response:
        host, loaded = self.model.host(), self.model.loaded()
        ok = host is not None and host.running and loaded is not None
        data = {"status": "ok" if ok else "unavailable", "model": model_id(loaded) if loaded else None,
                "slots": self.model.slots(), "in_flight": self.in_flight}
        return JSONResponse(data, 200 if ok else 503)

    async def models(self, request: Request) -> Response:
        _, loaded = self._ready()
        created = int(Path(loaded.path).stat().st_mtime) if Path(loaded.path).exists() else 0
        data = [{"id": i, "object": "model", "created": created, "owned_by": "kvdeck"}
                for i in self._ids(loaded)]
        wanted = request.path_params.get("model")
        if wanted is not None:
            match = [d for d in data if d["id"] == wanted]
            if not match:
                raise ApiError(404, f"the model {wanted!r} does not exist", param="model",
                               code="model_not_found")
            return JSONResponse(match[0])
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat(await self._body(request)))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion(await self._body(request)))

    async def _generate(self, request: Request, job: Job) -> Response:
        self._enter()
        call: _Call | None = None
        streaming = False
        try:
            call, name = await self._start(job)
            msg = await call.next(request)  # Started, or a refusal: a real 4xx before any header
            if isinstance(msg, P.ErrorEvent):
                raise _refusal(msg)
            if job.stream:
                streaming = True
                done = _Once(lambda: (call.cancel(), self._leave()))  # type: ignore[union-attr]
                return StreamingResponse(self._events(job, call, name, msg, done),
                                         media_type="text/event-stream", background=BackgroundTask(done),
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            while not isinstance(msg, P.Done):
                if isinstance(msg, P.ErrorEvent):
                    raise _refusal(msg)
                msg = await call.next(request)
            return JSONResponse(response(job, new_id(job.kind), name, msg.text,
                                         FINISH.get(msg.stop_reason, "stop"), msg.n_prompt, len(msg.tokens)))
        except _Gone:
            return Response(status_code=499)
        finally:
            if not streaming:
                if call is not None:
                    call.cancel()
                self._leave()

    def _leave(self) -> None:
        self.in_flight -= 1

    async def _events(self, job: Job, call: _Call, name: str, msg: P.Message,
                      done: Callable[[], None]) -> AsyncIterator[str]:
        rid = new_id(job.kind)
        try:
            if job.kind == "chat":
                yield _sse(chunk(job, rid, name, "", first=True))
            while True:
                if isinstance(msg, P.Delta) and msg.text:
                    yield _sse(chunk(job, rid, name, msg.text))
                elif isinstance(msg, P.Done):
                    yield _sse(chunk(job, rid, name, None, FINISH.get(msg.stop_reason, "stop")))
                    if job.include_usage:
                        yield _sse(chunk(job, rid, name, None, usage_counts=usage(msg.n_prompt, len(msg.tokens))))
                    break
                elif isinstance(msg, P.ErrorEvent):
                    yield _sse(_refusal(msg).body())
                    break
                msg = await call.next()
        except ApiError as exc:  # the runtime died mid-stream
            yield _sse(exc.body())
        finally:
            done()
        yield "data: [DONE]\n\n"


class _Once:
    """Cleanup that may be reached from the stream's end and from its background task."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn: Callable[[], object] | None = fn

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()


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
    routes = [Route("/health", api.health), Route("/v1/models", api.models),
              Route("/v1/models/{model:path}", api.models),
              Route("/v1/chat/completions", api.chat, methods=["POST"]),
              Route("/v1/completions", api.completions, methods=["POST"])]
    hosts = (LOOPBACK_NAMES | {config.host.strip("[]").lower()}) if is_loopback(config.host) else None
    middleware = []
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["*"]))
    middleware.append(Middleware(Guard, api_key=config.api_key, hosts=hosts,  # type: ignore[arg-type]
                                 max_body=config.max_body_bytes))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _bug})
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
            raise KvDeckError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}") from None
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=3,
                                limit_concurrency=256, timeout_keep_alive=5)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="kvdeck-api", daemon=True)
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
