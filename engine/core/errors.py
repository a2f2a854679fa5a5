"""User-facing errors.

Every failure a user can cause (a bad file, impossible settings, a crashed runtime) becomes a
`KvDeckError` whose `str()` is one readable line. The CLI prints it after `error:` and the GUI
shows it in the window; neither ever shows a traceback for these.
"""

from __future__ import annotations


class KvDeckError(Exception):
    """An error whose message is a complete, single-line sentence for the user."""

    def __init__(self, message: str) -> None:
        # File names and metadata may hold undecodable bytes (surrogate escapes): they must not
        # make printing the message fail, so they become U+FFFD here.
        text = str(message).encode("utf-8", "surrogateescape" if _escaped(message) else "replace")
        super().__init__(" ".join(text.decode("utf-8", "replace").split()))


def _escaped(message: object) -> bool:
    """True when every surrogate in the text is an escaped byte (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in str(message))


class ModelFileError(KvDeckError):
    """The file is missing, unreadable, or not a usable GGUF model."""


class RuntimeFailure(KvDeckError):
    """The llama.cpp runtime (child process) failed or stopped."""


class TemplateError(KvDeckError):
    """The model's chat template could not be rendered safely."""


class StoreError(KvDeckError):
    """The chat history database could not be read or written."""


class InvalidSettings(KvDeckError):
    """Parameters the runtime refused (a sampling value, a cache type, a draft setting)."""


class ContextFull(KvDeckError):
    """The prompt, or the conversation, does not fit the loaded context."""


class NotReady(KvDeckError):
    """The runtime is not in a state for this request (no model loaded, no draft, busy)."""


class Cancelled(KvDeckError):
    """The user cancelled the operation; not a failure worth an error dialog."""
