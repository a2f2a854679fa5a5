"""The real KV Deck window, chatting on its own and printing every committed store write.

`tests/test_faults.py` runs this as a subprocess and kills it with SIGKILL mid-save: a line is
printed only after the store call returned (its transaction committed), so each printed line is
a promise the database must keep after the kill. Usage, from the repository root:
``python -m tests.helpers.fault_app DB``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _printing(name: str, fn: Callable[..., Any], line: Callable[..., str]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        print(name, line(result, *args, **kwargs), flush=True)  # after the commit, never before
        return result

    return wrapper


def main(db: str) -> int:
    from PySide6.QtWidgets import QApplication

    app = QApplication([sys.argv[0]])
    from app.main_window import MainWindow
    from engine.storage.store import ChatStore

    store = ChatStore(db)
    store.add_message = _printing(  # type: ignore[method-assign]
        "add", store.add_message, lambda m, *a, **k: f"{m.id} {m.role} {len(m.content)}"
    )
    store.update_message = _printing(  # type: ignore[method-assign]
        "upd",
        store.update_message,
        lambda _r, msg_id, content, complete, **k: f"{msg_id} {len(content)} {int(complete)}",
    )
    store.set_setting("preset", "Greedy (deterministic)")
    store.set_setting("max_tokens", 300)
    win = MainWindow(store)
    win.show()
    turn = [0]

    def send(*_args: object) -> None:
        turn[0] += 1
        win.chat.input.setPlainText(f"Count from {turn[0]} to 400, one number per line.")
        win.chat.send()

    def on_loaded(_info: object) -> None:
        print("runtime", win.bridge.host.pid, flush=True)  # type: ignore[union-attr]
        send()

    win.bridge.loaded.connect(on_loaded)
    win.bridge.finished.connect(send)
    win.start()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
