"""User-facing errors.

Every failure a user can cause (a bad file, impossible settings, a crashed runtime) becomes a
`KvDeckError` whose `str()` is one readable line. The CLI prints it after `error:` and the GUI
shows it in the window; neither ever shows a traceback for these.
"""
from __future__ import annotations


class KvDeckError(Exception):
    """An error whose message is a complete, single-line sentence for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ModelFileError(KvDeckError):
    """The file is missing, unreadable, or not a usable GGUF model."""


class RuntimeFailure(KvDeckError):
    """The llama.cpp runtime (child process) failed or stopped."""


class TemplateError(KvDeckError):
    """The model's chat template could not be rendered safely."""


class StoreError(KvDeckError):
    """The chat history database could not be read or written."""


class Cancelled(KvDeckError):
    """The user cancelled the operation; not a failure worth an error dialog."""
