"""Self-drafting in the draft picker: the model's own MTP heads and Gemma 4 assistants found for it.

A model whose GGUF has MTP (nextn) layers can draft for itself: the picker offers "the model's
own MTP heads (n layers)". A ``gemma4-assistant`` file beside the model or in the library is
offered by name; choosing it runs the assistant's pairing rules like any draft
(engine.runtime.pairing). Assistants are recognised by architecture, never by file name, and the
search reads only GGUF headers, in the background (``app.background``), bounded in files and time.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.core.errors import KvDeckError
from engine.gguf.inspect import inspect_gguf
from engine.plan.assistant_rules import ASSISTANT_ARCH

MTP = "mtp"
#: Headers read at most per search, and the time it may take: a library can hold hundreds of files.
MAX_CHECKED, MAX_SECONDS = 64, 2.0
#: An assistant is small; a multi-gigabyte file is a target, not worth a header read here.
MAX_ASSISTANT_BYTES = 4 << 30


def mtp_label(n_layers: int) -> str:
    return f"the model's own MTP heads ({n_layers} layer{'s' if n_layers != 1 else ''})"


def assistant_label(path: str) -> str:
    return f"Gemma 4 assistant: {Path(path).name}"


def find_assistants(model_path: str, library: list[str] | None = None) -> list[str]:
    """Gemma 4 assistant files next to the model, then in ``library`` (default: the model
    library's search roots), by architecture; the model itself is never one."""
    candidates = sorted(str(p) for p in Path(model_path).parent.glob("*.gguf"))
    if library is None:
        from engine.storage.library import scan_models

        library = [str(e.path) for e in scan_models(timeout_s=MAX_SECONDS / 2)]
    candidates += [p for p in library if p not in candidates]
    found: list[str] = []
    deadline, checked = time.monotonic() + MAX_SECONDS, 0
    for path in candidates:
        if checked >= MAX_CHECKED or time.monotonic() > deadline:
            break
        try:
            if (
                Path(path).resolve() == Path(model_path).resolve()
                or Path(path).stat().st_size > MAX_ASSISTANT_BYTES
            ):
                continue
            checked += 1
            if inspect_gguf(path).architecture == ASSISTANT_ARCH:
                found.append(path)
        except (OSError, KvDeckError):
            continue
    return found
