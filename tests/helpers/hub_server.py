"""A fake Hugging Face Hub on 127.0.0.1 for the hub tests: no test may reach the internet.

It speaks the part of the Hub that `engine.hub` and ``huggingface_hub`` use: model search
(``/api/models``), model info with siblings, sizes and LFS sha256s (``?blobs=true``), and
``resolve`` answering HEAD and GET with a 302 to a "CDN" path plus the ``X-Repo-Commit``,
``X-Linked-Etag`` and ``X-Linked-Size`` headers; the CDN serves bytes with ``Range``/206.
Errors carry ``X-Error-Code`` like the Hub (GatedRepo, RepoNotFound, EntryNotFound). Knobs
for the failure tests: throttling, dropping the connection once after N bytes, corrupting a
byte, answering HTML to the API, a slow API (``api_delay_s``: every ``/api/`` answer waits,
as an overloaded Hub does), and a sibling that claims a size no disk has. Every CDN response
is logged with the bytes it sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeFile:
    path: Path
    sha256: str
    size: int  # what the Hub claims (may exceed the real file for the disk-full test)


@dataclass
class FakeRepo:
    files: dict[str, FakeFile] = field(default_factory=dict)
    gated: bool = False
    downloads: int = 0
    likes: int = 0


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, FakeFile] = {}
        self.log: list[tuple[str, str, str, int]] = []  # (method, path, range, bytes sent)
        self.throttle_bps: float | None = None
        self.drop_after: int | None = None  # close the next CDN response after this many bytes
        self.corrupt_at: int | None = None  # flip this byte offset in every CDN response
        self.html_api = False
        self.api_delay_s = 0.0  # sleep before answering any /api/ request
        self.cdn_auth: list[str] = []  # CDN requests that carried a token (must stay empty)
        self._server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()

    def use(self, tmp_path: Path, monkeypatch: Any) -> FakeHub:
        """Point HF_* at this hub with a private HF cache and no token, and reset every knob
        (a pytest fixture's body: `monkeypatch` undoes the environment after the test)."""
        import huggingface_hub.constants as hfc

        for var in (
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
        ):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        self.throttle_bps = self.drop_after = self.corrupt_at = None
        self.html_api, self.api_delay_s = False, 0.0
        self.cdn_auth.clear()
        with self.lock:
            self.log.clear()
        return self

    # -- content --------------------------------------------------------------------------
    def add(
        self,
        repo: str,
        name: str,
        path: Path,
        claimed_size: int | None = None,
        gated: bool = False,
        downloads: int = 100,
        likes: int = 5,
    ) -> FakeFile:
        r = self.repos.setdefault(repo, FakeRepo(downloads=downloads, likes=likes))
        r.gated = r.gated or gated
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        f = FakeFile(path, sha, claimed_size or path.stat().st_size)
        r.files[name] = f
        self.blobs[sha] = f
        return f

    def cdn_bytes(self) -> int:
        with self.lock:
            return sum(n for m, p, _r, n in self.log if p.startswith("/cdn/") and m == "GET")

    # -- life -----------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        """The same server under another host name, as the Hub's CDN is another host: the
        library reads a file's metadata from the redirect instead of following it."""
        return self.url.replace("127.0.0.1", "localhost")

    def stop(self) -> None:
        """Stop serving and leave no socket behind in this process: a later test that checks
        the process has no internet socket at all (test_hostile) must not find this hub's
        keep-alive connections, neither the server's end nor the client pool's."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # ends every open connection, joins its handler
        from huggingface_hub import close_session

        close_session()  # the library's shared client pooled connections to this hub


class _Server(ThreadingHTTPServer):
    """A threading server that knows its open connections: HTTP/1.1 keep-alive holds each one
    (and its handler thread) until the client hangs up, which a pooled client never does."""

    daemon_threads = False  # server_close() joins the handlers

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._open_lock:
            still_open = list(self._open)
        for conn in still_open:  # a handler waiting for the next request reads EOF and ends
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(
        self,
        code: int,
        body: bytes = b"",
        ctype: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, error_code: str, message: str) -> None:
        self._send(
            code,
            json.dumps({"error": message}).encode(),
            extra={"X-Error-Code": error_code, "X-Error-Message": message},
        )

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path.startswith("/cdn/"):
            return self._cdn(path[5:])
        if path.startswith("/api/") and self.hub.api_delay_s:
            time.sleep(self.hub.api_delay_s)
        if path.startswith("/api/models"):
            if self.hub.html_api:
                return self._send(
                    200, b"<!doctype html><html><body>Login</body></html>", "text/html; charset=utf-8"
                )
            if path in ("/api/models", "/api/models/"):
                return self._search(query)
            m = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?$", path)
            if m:
                return self._info(m.group(1))
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(m.group(1), m.group(3))
        self._error(404, "NotFound", "not found")

    def _search(self, query: dict[str, list[str]]) -> None:
        text = query.get("search", [""])[0].lower()
        limit = int(query.get("limit", ["20"])[0])
        rows = [
            {
                "_id": repo,
                "id": repo,
                "modelId": repo,
                "downloads": r.downloads,
                "likes": r.likes,
                "lastModified": "2026-11-02T10:00:00.000Z",
                "gated": "auto" if r.gated else False,
                "tags": ["gguf"],
                "private": False,
            }
            for repo, r in self.hub.repos.items()
            if text in repo.lower()
        ]
        rows.sort(key=lambda row: -int(row["downloads"]))  # type: ignore[call-overload]
        self._send(200, json.dumps(rows[:limit]).encode())

    def _info(self, repo: str) -> None:
        r = self.hub.repos.get(repo)
        if r is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        siblings = [
            {
                "rfilename": name,
                "size": f.size,
                "blobId": f.sha256[:40],
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134},
            }
            for name, f in r.files.items()
        ]
        siblings.append({"rfilename": "README.md", "size": 12, "blobId": "ab" * 20})
        body = {
            "_id": repo,
            "id": repo,
            "modelId": repo,
            "sha": COMMIT,
            "private": False,
            "gated": "auto" if r.gated else False,
            "downloads": r.downloads,
            "likes": r.likes,
            "lastModified": "2026-11-02T10:00:00.000Z",
            "tags": ["gguf"],
            "siblings": siblings,
        }
        self._send(200, json.dumps(body).encode())

    def _resolve(self, repo: str, name: str) -> None:
        r = self.hub.repos.get(repo)
        if r is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if r.gated and "authorization" not in {k.lower() for k in self.headers}:
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        f = r.files.get(name)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        self._send(
            302,
            b"",
            "text/plain",
            {
                "Location": f"{self.hub.cdn_url}/cdn/{f.sha256}?X-Amz-Signature=fake",
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "ETag": f'"{f.sha256[:40]}"',
            },
        )

    def _cdn(self, sha: str) -> None:
        f = self.hub.blobs.get(sha)
        if "authorization" in {k.lower() for k in self.headers}:
            self.hub.cdn_auth.append(self.path)
        if f is None:
            return self._error(404, "NotFound", "no such blob")
        size = f.size
        rng = self.headers.get("Range", "")
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng)
        start, end = (
            (int(m.group(1)), int(m.group(2)) if m and m.group(2) else size - 1) if m else (0, size - 1)
        )
        end = min(end, size - 1)
        if start >= size:
            return self._send(416, b"", extra={"Content-Range": f"bytes */{size}"})
        self.send_response(206 if m else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        self.send_header("Content-Length", str(end - start + 1))
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if self.command == "GET":
            sent = self._body(f, start, end + 1)
        with self.hub.lock:
            self.hub.log.append((self.command, f"/cdn/{sha}", rng, sent))

    def _body(self, f: FakeFile, start: int, stop: int) -> int:
        hub, sent, t0 = self.hub, 0, time.monotonic()
        drop = hub.drop_after
        if drop is not None:
            hub.drop_after = None  # once
        with open(f.path, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < stop:
                chunk = bytearray(fh.read(min(64 * 1024, stop - pos)))
                if not chunk:
                    break
                if hub.corrupt_at is not None and pos <= hub.corrupt_at < pos + len(chunk):
                    chunk[hub.corrupt_at - pos] ^= 0xFF
                if drop is not None and sent + len(chunk) > drop:
                    chunk = chunk[: max(0, drop - sent)]
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return sent
                sent += len(chunk)
                pos += len(chunk)
                if drop is not None and sent >= drop:
                    self.close_connection = True
                    return sent
                if hub.throttle_bps:
                    ahead = sent / hub.throttle_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        return sent
