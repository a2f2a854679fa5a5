"""Finding GGUF models that are already on this computer, for the "known models" list.

Where we look (`default_search_roots`):

* the Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``). Files there are
  ``models--org--repo/snapshots/<revision>/file.gguf``, symlinks into ``blobs/``;
* LM Studio (``~/.lmstudio/models``, ``~/.cache/lm-studio/models``);
* ``~/models`` and ``~/Models``.

Not searched: Ollama (``~/.ollama/models/blobs``). Its blobs are GGUF files, but named
``sha256-<hex>`` without an extension; telling models from adapters, templates and
projectors would mean reading its JSON manifests, which this module does not do (yet).

`scan_models` is bounded (entry count, depth and wall-clock time), follows symlinks with a
guard against cycles, and never raises for unreadable folders or broken links.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.core import paths

SOURCES = ("demo", "recent", "huggingface", "lmstudio", "models-folder")
MIN_MODEL_BYTES = 1024 * 1024
MAX_DEPTH = 8  # folders below a root; HF snapshots need 4, LM Studio 2

_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelEntry:
    path: Path  # as found (for HF: the snapshot path, not the blob it links to)
    name: str  # for display: "org/repo · file" for HF cache files, else the file stem
    size: int  # bytes (of the first part, for split models)
    source: str  # one of SOURCES


def _hf_hub_cache() -> Path:
    return paths.hf_hub_cache()  # shared with engine.hub, which downloads into it


def default_search_roots() -> list[tuple[str, Path]]:
    """(source, folder) pairs to scan, whether or not the folders exist."""
    home = Path.home()
    roots = [
        ("huggingface", _hf_hub_cache()),
        ("lmstudio", home / ".lmstudio" / "models"),
        ("lmstudio", home / ".cache" / "lm-studio" / "models"),
        ("models-folder", home / "models"),
        ("models-folder", home / "Models"),
    ]
    seen: set[Path] = set()
    unique = []
    for source, root in roots:
        if root not in seen:
            seen.add(root)
            unique.append((source, root))
    return unique


def display_name(path: Path) -> str:
    """ "org/repo · file" for a file in a Hugging Face cache snapshot, else the file stem."""
    parts = path.parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            repo = parts[i][len("models--") :].replace("--", "/", 1)
            return f"{repo} · {path.stem}"
    return path.stem


def is_model_file_name(name: str) -> bool:
    """A ``.gguf`` name that is a model to list: not a vision projector (mmproj), and for a
    split model (``-00001-of-00003.gguf``) only the first part."""
    lower = name.lower()
    if not lower.endswith(".gguf") or "mmproj" in lower:
        return False
    split = _SPLIT_RE.search(lower)
    return split is None or int(split.group(1)) == 1


def _real(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return os.path.abspath(path)


def _file_size(path: Path) -> int | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size if os.path.isfile(path) else None


def _walk(root: Path, deadline: float) -> Iterable[tuple[Path, int]]:
    """Yield (path, size) of candidate model files below `root`, following symlinks."""
    try:
        st = os.stat(root)
    except (OSError, ValueError):
        return
    visited = {(st.st_dev, st.st_ino)}
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        if time.monotonic() >= deadline:
            return
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (OSError, ValueError):
            continue
        subfolders = []
        for entry in entries:
            if time.monotonic() >= deadline:
                return
            try:
                if entry.is_dir(follow_symlinks=True):
                    if depth >= MAX_DEPTH or entry.name.startswith("."):
                        continue
                    dst = entry.stat(follow_symlinks=True)
                    key = (dst.st_dev, dst.st_ino)
                    if key not in visited:  # symlink loops and duplicate links end here
                        visited.add(key)
                        subfolders.append((Path(entry.path), depth + 1))
                elif is_model_file_name(entry.name) and entry.is_file(follow_symlinks=True):
                    size = entry.stat(follow_symlinks=True).st_size
                    if size >= MIN_MODEL_BYTES:
                        yield Path(entry.path), size
            except (OSError, ValueError):
                continue  # broken link, ELOOP, permission denied, vanished file
        stack.extend(reversed(subfolders))  # depth-first, in name order


def scan_models(
    roots: Sequence[tuple[str, Path]] | None = None,
    recent: Iterable[Path] = (),
    limit: int = 500,
    timeout_s: float = 2.0,
) -> list[ModelEntry]:
    """Known models: the demo model first, then `recent` (in the given order, if they still
    exist), then everything found under `roots` (default: `default_search_roots()`) sorted
    by name. Files are deduplicated by resolved path; the scan stops after `limit` entries or
    `timeout_s` seconds and returns what it found so far. Never raises for file-system errors.
    """
    deadline = time.monotonic() + timeout_s
    if roots is None:
        roots = default_search_roots()
    seen: set[str] = set()
    result: list[ModelEntry] = []

    def add(path: Path, size: int | None, source: str) -> bool:
        if size is None or len(result) >= limit:
            return False
        real = _real(path)
        if real in seen:
            return False
        seen.add(real)
        result.append(ModelEntry(path, display_name(path), size, source))
        return True

    demo = paths.demo_model_path()
    if demo is not None:
        add(demo, _file_size(demo), "demo")
    for path in recent:
        path = Path(path).expanduser()
        add(path, _file_size(path), "recent")

    head = len(result)
    for source, root in roots:
        for path, size in _walk(Path(root).expanduser(), deadline):
            if len(result) >= limit:
                break
            add(path, size, source)
        if len(result) >= limit or time.monotonic() >= deadline:
            break
    found = result[head:]
    found.sort(key=lambda e: (e.name.casefold(), str(e.path)))
    return result[:head] + found
