"""The log file, ``kvdeck.log`` in the data folder: what the window, the command line and the
self-test write from INFO up (llama.cpp's own log included), with the traceback of every bug.

The terminal gets one line per failure; the details a bug report needs are here. The window, a
CLI command and a server may append to the file at the same time, so each record carries its
process id.
"""

from __future__ import annotations

import logging
import logging.handlers

from engine.core import paths

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 2_000_000
BACKUPS = 2


def file_handler(level: int = logging.INFO) -> logging.Handler:
    """A handler appending to `paths.log_path()` (rotated at 2 MB, two old files kept).

    Raises `KvDeckError` when the data folder cannot be created and `OSError` when the file
    cannot be opened; callers carry on without a log file then."""
    handler = logging.handlers.RotatingFileHandler(
        paths.log_path(), maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
    )
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler
