"""Download GGUFs into the Hugging Face cache: resumable, checked, and never half-visible.

Files land where ``huggingface_hub`` puts them (``models--org--repo/blobs/<sha256>`` with a
``snapshots/<commit>/<file>`` link), so a file fetched by any HF tool is found here and not
fetched twice, and `engine.storage.library` lists what we fetch. The library itself is not used
for the transfer: 2.x no longer resumes across calls, and a 40 GB model must survive a killed
app or a dropped connection. So the partial file stays as ``blobs/<sha256>.incomplete`` (not a
``.gguf`` name: no scan ever offers it) and is continued with a ``Range`` request; the sha256
of the whole file (the Hub's LFS etag) is checked before the file is moved into place and
linked; free disk space is checked before the first byte; the same lock file as
``hf_hub_download`` keeps two downloaders off one blob.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.core import paths
from engine.hub.client import (
    READ_TIMEOUT_S,
    HubError,
    HubUnreachable,
    check_file,
    check_repo,
    endpoint,
    headers,
    hub_errors,
    offline,
    resolve_url,
    session,
    timeout,
)
from engine.hub.names import RemoteModel

CHUNK = 1024 * 1024
DISK_MARGIN = 256 * 1024 * 1024  # never fill the disk to the last byte
RETRIES = 5  # dropped connections in a row (without progress) before giving up


class Cancelled(HubError):
    """The download was cancelled; its partial file is kept for a resume unless discarded."""


@dataclass(frozen=True)
class Progress:
    """What a progress bar needs. `done`/`total` are bytes of the whole job (all parts)."""

    label: str
    state: str  # "checking", "downloading", "verifying", "done", "failed", "cancelled"
    done: int
    total: int
    speed: float  # bytes/s over this session (resumed bytes excluded)
    eta_s: float | None
    message: str = ""


ProgressFn = Callable[[Progress], None]


def cached_file(repo: str, filename: str, revision: str = "main") -> Path | None:
    """The file in the HF cache, if any HF tool downloaded it already (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=paths.hf_hub_cache(), revision=revision)
    except ValueError:
        return None
    return Path(found) if isinstance(found, str) else None


def _storage(repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return paths.hf_hub_cache() / repo_folder_name(repo_id=repo, repo_type="model")


def _link(blob: Path, snap: Path) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, as huggingface_hub lays it out."""
    snap.parent.mkdir(parents=True, exist_ok=True)
    tmp = snap.with_name(snap.name + ".kvdeck-link")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, snap.parent), tmp)
    except OSError:  # no symlinks (Windows without developer mode): the file itself
        os.replace(blob, snap)
        return
    os.replace(tmp, snap)


def _hash_prefix(path: Path, cancel: threading.Event | None) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            h.update(chunk)
    return h


class _Meter:
    """Throttled progress reports for one job (several files)."""

    def __init__(self, label: str, total: int, on_progress: ProgressFn | None) -> None:
        self.label, self.total, self.fn = label, total, on_progress
        self.base = 0  # bytes of earlier parts
        self.start, self.session_bytes, self.last = time.monotonic(), 0, 0.0
        self.done_in_file = 0

    def report(self, state: str, done_in_file: int | None = None, force: bool = False, msg: str = "") -> None:
        if done_in_file is None:
            done_in_file = self.done_in_file
        self.done_in_file = done_in_file
        now = time.monotonic()
        if self.fn is None or (not force and now - self.last < 0.1):
            return
        self.last = now
        speed = self.session_bytes / max(1e-6, now - self.start)
        done = self.base + done_in_file
        eta = (self.total - done) / speed if speed > 0 else None
        self.fn(Progress(self.label, state, done, self.total, speed, eta, msg))


def _fetch(
    url: str,
    partial: Path,
    total: int,
    sha: hashlib._Hash,
    meter: _Meter,
    cancel: threading.Event | None,
    label: str,
) -> hashlib._Hash:
    """Append the rest of the file to `partial` (which `sha` already covers), resuming after
    dropped connections; returns the hash of the whole file."""
    import httpx2

    failures = 0
    while True:
        have = partial.stat().st_size
        if have >= total:
            return sha
        got = 0
        try:
            with (
                hub_errors(label),
                session().stream(
                    "GET",
                    url,
                    timeout=timeout(),
                    headers=headers({"Range": f"bytes={have}-", "Accept-Encoding": "identity"}, url),
                ) as r,
            ):
                if r.status_code >= 400:
                    r.read()
                    from huggingface_hub.utils import hf_raise_for_status

                    hf_raise_for_status(r)
                if r.status_code == 200 and have:  # the server ignored the range: start over
                    partial.write_bytes(b"")
                    sha, have = hashlib.sha256(), 0
                elif r.status_code != 206 and r.status_code != 200:
                    raise HubError(f"{label}: the Hub answered HTTP {r.status_code}")
                if "text/html" in r.headers.get("content-type", "").lower():
                    raise HubError(
                        f"{label}: the server answered with a web page, not the file (a login or proxy page?)"
                    )
                url = str(r.url)  # the CDN's URL: later ranges skip the redirect
                with open(partial, "ab") as fh:
                    for chunk in r.iter_bytes():  # as it arrives: a drop loses nothing
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(f"{label}: download cancelled")
                        if have + got + len(chunk) > total:
                            raise HubError(f"{label}: the server sent more bytes than the file has")
                        fh.write(chunk)
                        sha.update(chunk)
                        got += len(chunk)
                        meter.session_bytes += len(chunk)
                        meter.report("downloading", have + got)
            if have + got < total:
                raise httpx2.RemoteProtocolError("the connection closed early")
        except (HubUnreachable, httpx2.TransportError) as exc:
            failures = 0 if got else failures + 1
            if failures >= RETRIES:
                raise (
                    exc
                    if isinstance(exc, HubError)
                    else HubUnreachable(f"{label}: the connection keeps dropping; run again to resume")
                ) from None
            time.sleep(min(4.0, 0.5 * (failures + 1)))


def download_file(
    repo: str,
    filename: str,
    *,
    revision: str = "main",
    expected_sha256: str | None = None,
    meter: _Meter | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """One file into the HF cache; returns its snapshot path. Already there: no transfer."""
    from huggingface_hub import get_hf_file_metadata

    check_repo(repo)
    check_file(filename)
    label = f"{repo} · {filename}"
    meter = meter or _Meter(label, 0, None)
    meter.report("checking", 0, force=True)
    cached = cached_file(repo, filename, revision)
    try:
        with hub_errors(label):
            meta = get_hf_file_metadata(
                resolve_url(repo, filename, revision), timeout=READ_TIMEOUT_S, endpoint=endpoint()
            )
    except HubUnreachable:
        if cached is not None:  # offline first: what we have is good enough
            return cached
        raise
    etag, total, commit = meta.etag, meta.size, meta.commit_hash
    if not etag or total is None or not commit or "/" in etag or not etag.isprintable():
        raise HubError(f"{label}: the Hub did not give the file's etag, size and commit")
    sha_hex = (expected_sha256 or (etag if len(etag) == 64 else "")).lower()
    storage = _storage(repo)
    blob, snap = storage / "blobs" / etag, storage / "snapshots" / commit / filename
    if snap.is_file() and snap.stat().st_size == total:
        _write_ref(storage, revision, commit)
        return snap
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not (blob.is_file() and blob.stat().st_size == total):
        _download_blob(
            resolve_url(repo, filename, revision), storage, etag, total, sha_hex, meter, cancel, label
        )
    _link(blob, snap)
    _write_ref(storage, revision, commit)
    return snap


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    if revision != commit and "/" not in revision:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.write_text(commit)


def _download_blob(
    url: str,
    storage: Path,
    etag: str,
    total: int,
    sha_hex: str,
    meter: _Meter,
    cancel: threading.Event | None,
    label: str,
) -> None:
    from filelock import FileLock, Timeout

    blob = storage / "blobs" / etag
    partial = blob.with_name(etag + ".incomplete")
    lock_path = paths.hf_hub_cache() / ".locks" / storage.name / f"{etag}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(lock_path), timeout=1)
        lock.acquire()
    except Timeout:
        raise HubError(f"{label} is being downloaded by another program right now") from None
    try:
        have = partial.stat().st_size if partial.is_file() else 0
        if have > total:
            partial.unlink()
            have = 0
        free = shutil.disk_usage(blob.parent).free
        if total - have + DISK_MARGIN > free:
            raise HubError(
                f"not enough disk space for {label}: it needs "
                f"{(total - have) / 2**30:.1f} GiB more, {free / 2**30:.1f} GiB "
                f"is free in {blob.parent}"
            )
        partial.touch()
        sha = _hash_prefix(partial, cancel) if have else hashlib.sha256()
        meter.report("downloading", have, force=True)
        sha = _fetch(url, partial, total, sha, meter, cancel, label)
        meter.report("verifying", total, force=True)
        if partial.stat().st_size != total:
            raise HubError(f"{label}: got {partial.stat().st_size} bytes, expected {total}")
        if sha_hex and sha.hexdigest() != sha_hex:
            partial.unlink(missing_ok=True)
            raise HubError(
                f"{label} failed its sha256 check (got {sha.hexdigest()[:12]}…, "
                f"the Hub says {sha_hex[:12]}…): the download was deleted, "
                "try again"
            )
        os.replace(partial, blob)
    finally:
        lock.release()


def partial_bytes(repo: str, etag: str) -> int:
    """Size of a kept partial download (for "resume 1.2 of 4.5 GiB")."""
    p = _storage(repo) / "blobs" / f"{etag}.incomplete"
    return p.stat().st_size if p.is_file() else 0


def discard_partial(repo: str, etag: str) -> None:
    (_storage(repo) / "blobs" / f"{etag}.incomplete").unlink(missing_ok=True)


def download_model(
    model: RemoteModel,
    *,
    revision: str = "main",
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Every part of `model`, in order, into the HF cache; one progress total for all parts.
    Returns the snapshot paths (the first one is what `inspect_gguf`/the library open)."""
    if offline():
        found = [cached_file(model.repo, f.name, revision) for f in model.files]
        if all(found):
            return [p for p in found if p is not None]
    meter = _Meter(f"{model.repo} · {model.name}", model.size or 0, on_progress)
    out = []
    try:
        for f in model.files:
            out.append(
                download_file(
                    model.repo,
                    f.name,
                    revision=revision,
                    expected_sha256=f.sha256,
                    meter=meter,
                    cancel=cancel,
                )
            )
            meter.base += f.size or 0
            meter.done_in_file = 0
    except Cancelled as exc:
        meter.report("cancelled", force=True, msg=str(exc))
        raise
    except HubError as exc:
        meter.report("failed", force=True, msg=str(exc))
        raise
    meter.report("done", force=True)
    return out
