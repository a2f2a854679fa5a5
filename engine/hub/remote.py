"""Read a remote GGUF's header with HTTP range requests, to judge it before downloading it.

Everything the memory plan needs (metadata and the tensor table) is at the start of the file,
so a verdict on a 40 GB model costs its header: a few MB for a 256k-token vocabulary, far less
for most. The range grows until `engine.gguf.reader` parses it (`Incomplete` says how far it
got), and only the missing bytes are fetched each time. ``resolve`` URLs answer large files
with a redirect to a CDN; the client follows it (dropping the token on the way, as httpx does
across hosts) and the final URL is reused for the next ranges of the same file.

Headers are cached under the data folder, named by the content's sha256 (immutable on the
Hub), so listing a repository again costs nothing; the cached file is also what
`read_tensor_dims` re-reads for the CPU repack plan (the `GGUFInfo.path` of a remote model).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core import paths
from engine.core.errors import ModelFileError
from engine.gguf.inspect import GGUFInfo, inspect_header
from engine.gguf.reader import Corrupt, Incomplete, read_header
from engine.hub.client import (
    HubError,
    check_file,
    check_repo,
    headers,
    hub_errors,
    resolve_url,
    session,
    timeout,
)
from engine.hub.names import RemoteFile, RemoteModel

FIRST_RANGE = 512 * 1024  # most of it is the vocabulary: 256k tokens need a few MB
LATER_PART_RANGE = 64 * 1024  # parts after a split model's first: a tensor table, no vocab
MAX_HEADER_BYTES = 64 * 1024 * 1024  # no real header comes close; a lying one stops here


@dataclass
class ReadStats:
    """Bytes fetched for one verdict (0 when every header came from the disk cache)."""

    bytes_read: int = 0
    requests: int = 0
    cached_parts: int = 0
    header_bytes: list[int] = field(default_factory=list)


def header_cache_dir() -> Path:
    path = paths.data_dir() / "hub" / "headers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_path(repo: str, revision: str, f: RemoteFile) -> Path:
    key = (
        f.sha256
        or hashlib.sha256(
            f"{repo}\0{revision}\0{f.name}\0{f.size}".encode("utf-8", "surrogateescape")
        ).hexdigest()
    )
    return header_cache_dir() / f"{key}.gguf-header"


class _RangeReader:
    """Successive ranges of one remote file, from the byte after the last one read."""

    def __init__(self, repo: str, f: RemoteFile, revision: str, stats: ReadStats) -> None:
        self.url = resolve_url(repo, f.name, revision)
        self.label = f"{repo} · {f.name}"
        self.stats = stats

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file; fewer only if the file ends sooner."""
        want = end - start
        ask = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        with (
            hub_errors(self.label),
            session().stream("GET", self.url, timeout=timeout(), headers=headers(ask, self.url)) as r,
        ):
            if r.status_code >= 400:
                r.read()
                from huggingface_hub.utils import hf_raise_for_status

                hf_raise_for_status(r)
            if r.status_code not in (200, 206):
                raise HubError(f"{self.label}: the Hub answered HTTP {r.status_code}")
            if "text/html" in r.headers.get("content-type", "").lower():
                raise HubError(
                    f"{self.label}: the server answered with a web page, not "
                    "the file (a login or proxy page?)"
                )
            skip = start if r.status_code == 200 else 0  # range ignored: whole file
            if r.status_code == 206 and not r.headers.get("content-range", "").startswith(f"bytes {start}-"):
                raise HubError(f"{self.label}: the server answered a different range")
            self.url = str(r.url)  # after redirects: the CDN's (signed) URL
            out = bytearray()
            for chunk in r.iter_bytes():
                self.stats.bytes_read += len(chunk)
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                out += chunk
                if len(out) >= want:
                    break
            self.stats.requests += 1
        return bytes(out[:want])


def fetch_header(
    repo: str,
    f: RemoteFile,
    revision: str = "main",
    stats: ReadStats | None = None,
    first_range: int = FIRST_RANGE,
) -> tuple[Path, tuple[Any, Any, Any]]:
    """(cached header file, parsed header) of one remote GGUF file, fetching only what the
    disk cache lacks. Raises `HubError` or `ModelFileError` (not a GGUF, corrupt, too big)."""
    check_repo(repo)
    check_file(f.name)
    stats = stats if stats is not None else ReadStats()
    label = f.name.rsplit("/", 1)[-1]
    if f.size is None:
        raise HubError(f"{repo} · {f.name}: the Hub did not say how big it is")
    if f.size < 24:
        raise ModelFileError(f"{label} is too small to be a GGUF file")
    cache = _cache_path(repo, revision, f)
    try:
        data = cache.read_bytes()
        stats.cached_parts += 1
    except OSError:
        data = b""
    reader: _RangeReader | None = None
    want = min(f.size, max(first_range, len(data)))
    while True:
        if len(data) < want:
            reader = reader or _RangeReader(repo, f, revision, stats)
            more = reader.read(len(data), want)
            if not more:
                raise HubError(f"{repo} · {f.name}: the server sent no data")
            data += more
        try:
            header = read_header(label, f.size, data)
            break
        except Incomplete as exc:
            if len(data) >= MAX_HEADER_BYTES:
                raise ModelFileError(
                    f"{label} has a header larger than {MAX_HEADER_BYTES >> 20} MiB; not judged remotely"
                ) from None
            want = min(f.size, MAX_HEADER_BYTES, max(2 * len(data), exc.needed + 64 * 1024))
        except Corrupt as exc:
            raise ModelFileError(f"{label} {exc}") from None
    stats.header_bytes.append(len(data))
    if reader is not None:  # new bytes: keep them (atomically, never a half-written cache)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, cache)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise HubError(f"cannot write the header cache in {cache.parent}") from None
    return cache, header


def remote_info(model: RemoteModel, revision: str = "main", stats: ReadStats | None = None) -> GGUFInfo:
    """What `inspect_gguf` would say about `model` once downloaded, from its header(s) alone.

    A split model's tensor table is spread over its parts: every part's header is read and
    the tables put together, so the weights are counted in full."""
    if model.role == "mmproj":
        raise ModelFileError(
            f"{model.name} is a vision projector (mmproj), not a language model: pick the model it belongs to"
        )
    if not model.complete:
        raise HubError(
            f"{model.repo} · {model.name}: the repository lists "
            f"{len(model.files)} of its {model.n_parts} parts"
        )
    stats = stats if stats is not None else ReadStats()
    first_path, (meta, types, tensors) = fetch_header(model.repo, model.files[0], revision, stats)
    tensors = list(tensors)
    for part in model.files[1:]:
        _p, (_m, _t, more) = fetch_header(model.repo, part, revision, stats, first_range=LATER_PART_RANGE)
        tensors += more
    try:
        return inspect_header(str(first_path), (meta, types, tensors), model.size or 0)
    except ModelFileError as exc:  # name the model, not the cache file
        text = str(exc)
        raise ModelFileError(model.name + text[text.find(" ") :] if " " in text else text) from None
