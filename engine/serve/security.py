"""What keeps the local API server (engine.serve.server) from being an open door, in one place.

A port on 127.0.0.1 is reachable by every program on the machine and, through the browser, by
every web page the user opens. So: any address other than loopback needs an API key; on
loopback the Host header must name loopback, so a page that rebinds its own domain name to
127.0.0.1 (DNS rebinding) is refused; the API key, when set, is checked on every endpoint but
/health with a constant-time comparison; a declared body over the limit is refused before it is
read. These checks run in an ASGI middleware, before any route.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from engine.core.errors import KvDeckError
from engine.serve.openai_api import MAX_BODY_BYTES, ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and the limits; the defaults are the safe ones (loopback, no CORS)."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    max_queue: int = 16
    max_body_bytes: int = MAX_BODY_BYTES
    #: "" (OpenAI's 400 context_length_exceeded) or an engine.chat.overflow policy:
    #: rolling | middle | stop, applied to chat requests that do not fit a sequence.
    overflow: str = ""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServerConfig) -> None:
    """Refuse, in one sentence, a server other machines could reach without a key."""
    if not is_loopback(config.host) and not config.api_key:
        raise KvDeckError(
            f"serving on {config.host} makes the model reachable from other machines; "
            "give an API key (--api-key) or bind 127.0.0.1"
        )
    if not 0 <= config.port <= 65535:
        raise KvDeckError(f"the port must be between 0 and 65535, not {config.port}")


def _host_name(value: str) -> str:
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """Host header, API key and declared body size, checked before any route runs."""

    def __init__(self, app: Any, *, api_key: str, hosts: frozenset[str] | None, max_body: int) -> None:
        self.app, self.api_key, self.hosts, self.max_body = app, api_key, hosts, max_body

    def _problem(self, scope: dict[str, Any], headers: Headers) -> ApiError | None:
        if self.hosts is not None and _host_name(headers.get("host", "")).lower() not in self.hosts:
            return ApiError(400, "the Host header does not name this server", code="invalid_host")
        if self.api_key and scope.get("path") != "/health":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_key.encode()
            ):
                return ApiError(
                    401,
                    "invalid or missing API key (send Authorization: Bearer KEY)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return ApiError(
                413, f"the request body is larger than {self.max_body} bytes", code="request_too_large"
            )
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope, Headers(scope=scope))
            if problem is not None:
                await JSONResponse(problem.body(), problem.status, headers=problem.headers)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
