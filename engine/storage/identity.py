"""Names for stored things: a model file's identity, a conversation's title from its text."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.core.errors import ModelFileError

DEFAULT_TITLE = "New chat"
_KEY_CHUNK = 1024 * 1024


def os_reason(exc: BaseException) -> str:
    """The short reason of an OS or sqlite error, for one-line messages."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def model_key(path: Path | str) -> str:
    """A model file's identity, independent of where it lies: ``"{size}-{hash16}"``.

    The hash is SHA-256 over the size, the first MiB and the last MiB, so it is cheap even for
    a 100 GB file. Raises `ModelFileError` when the file cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            digest = hashlib.sha256(str(size).encode("ascii") + b"\0")
            digest.update(fh.read(_KEY_CHUNK))
            if size > _KEY_CHUNK:
                fh.seek(max(_KEY_CHUNK, size - _KEY_CHUNK))
                digest.update(fh.read(_KEY_CHUNK))
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {os_reason(exc)}") from exc
    return f"{size}-{digest.hexdigest()[:16]}"


def title_from_text(text: str, limit: int = 48) -> str:
    """A conversation title from the first non-empty line of `text`, at most `limit` chars."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if not line:
        return DEFAULT_TITLE
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"
