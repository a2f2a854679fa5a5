"""Start the desktop app: logging, the chat store, the window, and the first model."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from app.appinfo import APP_NAME, resource_path, seconds_since_start
from engine.core import logfile, paths
from engine.core.errors import KvDeckError
from engine.storage.store import ChatStore

log = logging.getLogger("kvdeck")


def _setup_logging() -> None:
    """Warnings to the terminal; everything from INFO (llama.cpp's log included) to a log file."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    try:
        root.addHandler(logfile.file_handler())
    except (OSError, KvDeckError) as exc:
        log.warning("no log file: %s", exc)


def open_store() -> tuple[ChatStore, str]:
    """The chat history, or (when it cannot be written: a read-only or full data folder) an
    in-memory copy of it, with the reason, so old chats stay visible and new ones still work."""
    try:
        return ChatStore.open_default(), ""
    except KvDeckError as exc:
        from engine.storage.fallback import IN_MEMORY_NOTE

        try:
            path = paths.db_path()
        except KvDeckError:
            return ChatStore(":memory:"), f"{exc} — {IN_MEMORY_NOTE}."
        return ChatStore.memory_copy(path), f"{exc} — {IN_MEMORY_NOTE}."


def _single_instance():  # noqa: ANN202 (SingleInstance | None; Qt is imported lazily)
    """This data folder's single-instance guard, or None when the folder cannot be had."""
    from app.single_instance import SingleInstance

    try:
        folder = paths.data_dir()
        folder.mkdir(parents=True, exist_ok=True)
    except (KvDeckError, OSError) as exc:
        log.info("no single-instance guard: %s", exc)
        return None
    return SingleInstance(folder)


def run(argv: Sequence[str]) -> int:
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow

    _setup_logging()
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("kvdeck")  # matches installer/linux/kvdeck.desktop (Wayland icon, menu entry)
    app.setOrganizationName(APP_NAME)
    icon = resource_path("icons/kvdeck.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    instance = _single_instance()
    model_args = [a for a in argv if not a.startswith("-")]
    if instance is not None and not instance.claim():
        if instance.hand_over(list(model_args)):
            log.info("handed %s to the KV Deck window already open", model_args or "nothing")
            return 0
        log.warning("another KV Deck holds this data folder but does not answer; opening anyway")
    store, store_problem = open_store()
    from app.theme import apply_theme

    apply_theme(str(store.get_setting("theme", "system")))
    window = MainWindow(store)
    if instance is not None:
        instance.received.connect(window.receive_arguments)
    window.show()
    log.info("window shown %.2f s after process start", seconds_since_start())
    if store_problem:
        window.show_problem(store_problem, sticky=True)
    if model_args:
        window.open_model(model_args[0])
    else:
        window.start()
    code = app.exec()
    store.close()
    if instance is not None:
        instance.release()
    return code
