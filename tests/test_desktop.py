"""Issue 20: a desktop app that behaves like one (themes, layout, menus, shortcuts, one instance).

The contrast test reads the colours Qt actually applied to the rendered transcript (every text
fragment's foreground against the background of its block, table cell or table) and checks a
grabbed pixel of each bubble, in the light and the dark theme.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette, QTextCursor, QTextFormat
from PySide6.QtWidgets import QAbstractButton, QApplication, QScrollArea

from app.chat.chat_view import ChatView, ShownMessage
from app.main_window import MEMORY_MIN_WIDTH, MEMORY_WIDTH
from app.memory.dashboard_widgets import idle_split
from app.model_text import model_summary
from app.single_instance import SingleInstance, server_name
from app.theme import apply_theme, chat_colors, contrast
from engine.core import paths
from tests.helpers.gui import LOAD_TIMEOUT_MS, new_window

ROOT = Path(__file__).resolve().parents[1]
REPLY = (
    "Sure, here is **one**:\n\n```python\n# add one\ndef f(x):\n    return x + 1  # done\n```\n\n"
    "Inline `code`, a [link](https://example.org) and\n\n> a quote"
)


@pytest.fixture
def theme_reset():
    yield
    apply_theme("system")


def _fragments(view: ChatView):
    """(text, foreground, background) of every text fragment, as Qt applied them."""
    pal = view.palette()
    block = view.document().begin()
    while block.isValid():
        cursor = QTextCursor(block)
        table = cursor.currentTable()
        bg = pal.color(QPalette.ColorRole.Base)
        if table is not None:
            cell = table.cellAt(cursor).format()
            if cell.hasProperty(QTextFormat.Property.BackgroundBrush):
                bg = cell.background().color()
            elif table.format().hasProperty(QTextFormat.Property.BackgroundBrush):
                bg = table.format().background().color()
        if block.blockFormat().hasProperty(QTextFormat.Property.BackgroundBrush):
            bg = block.blockFormat().background().color()
        it = block.begin()
        while not it.atEnd():
            frag = it.fragment()
            fmt = frag.charFormat()
            fg = (
                fmt.foreground().color()
                if fmt.hasProperty(QTextFormat.Property.ForegroundBrush)
                else pal.color(QPalette.ColorRole.Link if fmt.isAnchor() else QPalette.ColorRole.Text)
            )
            fbg = fmt.background().color() if fmt.hasProperty(QTextFormat.Property.BackgroundBrush) else bg
            if frag.text().strip():
                yield frag.text(), fg, fbg
            it += 1
        block = block.next()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_chat_text_meets_wcag_aa_in_both_themes(qtbot, theme, theme_reset) -> None:
    apply_theme(theme)
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(760, 900)
    view.show()
    view.set_messages(
        [
            ShownMessage(1, "user", "What is **one** plus x?", True),
            ShownMessage(2, "assistant", REPLY, True, "31 tokens · 42.0 tokens/s"),
            ShownMessage(3, "assistant", "cut off", False),
        ]
    )
    colors = chat_colors(view.palette())
    assert colors.dark == (theme == "dark")
    seen = list(_fragments(view))
    texts = " ".join(t for t, _, _ in seen)
    assert "add one" in texts and "return" in texts and "incomplete" in texts and "copy" in texts
    low = [
        (t, fg.name(), bg.name(), round(contrast(fg, bg), 2)) for t, fg, bg in seen if contrast(fg, bg) < 4.5
    ]
    assert not low, low
    # the bubbles really are painted in the theme's colours (grab the widget and look)
    image = view.viewport().grab().toImage()
    painted = {image.pixelColor(x, y).name() for x in range(20, 700, 7) for y in range(14, 600, 7)}
    assert colors.user_bg in painted and colors.assistant_bg in painted
    dark_bg = QColor(colors.assistant_bg).lightnessF() < 0.5
    assert dark_bg == (theme == "dark")


def test_model_summary_uses_the_parameter_count() -> None:
    assert model_summary("llama 256M Q8_0", 134_515_008) == "llama 135M params Q8_0"
    assert model_summary("gemma3 1B Q4_K - Medium", 999_885_952) == "gemma3 1B params Q4_K - Medium"
    assert model_summary("weird", 5) == "weird"


def test_speed_chart_breaks_its_line_across_idle_time() -> None:
    points = [(0.0, 10.0), (0.5, 12.0), (1.0, 11.0), (60.0, 9.0), (60.4, 9.5)]
    assert [len(run) for run in idle_split(points)] == [3, 2]


def test_window_menus_shortcuts_layout_and_state(qtbot, tmp_path, monkeypatch, smollm2_path) -> None:
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path, max_tokens=3000)
    try:
        titles = [a.text().replace("&", "") for a in win.menuBar().actions()]
        assert titles[:2] == ["File", "Edit"] and {"View", "Server", "Help"} <= set(titles)
        keys = {
            a.text().replace("&", ""): a.shortcut().toString() for a in win.findChildren(type(win.menus.quit))
        }
        assert keys["New chat"] == "Ctrl+N" and keys["Open GGUF…"] == "Ctrl+O" and keys["Quit"] == "Ctrl+Q"
        assert (
            keys["Find…"] == "Ctrl+F" and keys["Stop generating"] == "Esc" and keys["Send"] == "Ctrl+Return"
        )
        rows = dict(win.menus.shortcut_rows())
        assert rows["Esc"] == "Stop generating" and "Ctrl+Q" in rows
        # 1000×700: the Memory dock keeps a usable width and its cache panel scrolls
        QApplication.processEvents()  # the layouts settle the window's minimum size
        assert win.minimumSizeHint().width() <= 1000 and win.minimumSizeHint().height() <= 700
        win.resize(1000, 700)
        qtbot.waitUntil(lambda: win.width() == 1000)
        assert win.memory.width() >= 360
        assert win.memory.cache.parentWidget() is not None
        assert any(
            isinstance(a, QScrollArea) and a.widget() is win.memory.cache
            for a in win.memory.findChildren(QScrollArea)
        )
        win.resize(1600, 1000)  # growing the window gives the dock its width back
        qtbot.waitUntil(lambda: win.memory.width() >= 400)
        # closing the Memory dock is not for good: View → Memory panel brings it back
        win.memory.close()
        assert not win.memory.isVisible()
        win.memory.toggleViewAction().trigger()
        assert win.memory.isVisible()
        # the model loads; the status bar gives llama.cpp's parameter count
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.start()
        assert "135M params" in win.model_label.text(), win.model_label.text()
        # Escape stops a reply
        win.chat.input.setPlainText("Count from 1 to 500.")
        with qtbot.waitSignal(win.bridge.delta, timeout=LOAD_TIMEOUT_MS):
            win.chat.send()
        with qtbot.waitSignal(win.bridge.finished, timeout=30_000) as done:
            qtbot.keyClick(win.chat.input, Qt.Key.Key_Escape)
        assert done.args[0].stop_reason == "cancelled"
        # Ctrl+Enter mode: Enter adds a line, Ctrl+Enter sends
        win.menus.ctrl_enter.setChecked(True)
        win.chat.max_tokens.setValue(4)
        win.chat.input.setPlainText("Hi")
        qtbot.keyClick(win.chat.input, Qt.Key.Key_Return)
        assert win.chat.input.toPlainText().count("\n") == 1 and not win.bridge.generating
        with qtbot.waitSignal(win.bridge.finished, timeout=LOAD_TIMEOUT_MS):
            qtbot.keyClick(win.chat.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        assert win.store.get_setting("send_with_ctrl_enter") is True
        # find in the transcript selects the text
        assert win.menus.find_in_transcript("Count from")
        assert win.chat.view.textCursor().selectedText() == "Count from"
        # server port and key reach the toggle and the store
        from app.bridges.server_settings import ServerSettingsDialog

        dialog = ServerSettingsDialog(win.server_toggle, win.store, win)
        dialog.port.setValue(8765)
        dialog.key.setText("sekrit")
        dialog.accept()
        assert (win.server_toggle.port, win.server_toggle.api_key) == (8765, "sekrit")
        assert win.store.get_setting("server_port") == 8765
        # the layout is kept (in the data folder) for the next window
        win.memory.hide()
        win.close()
        assert (paths.data_dir() / "window.ini").is_file()
        second = new_window(qtbot, tmp_path / "2", monkeypatch, smollm2_path)
        try:
            assert not second.memory.isVisible()  # (the geometry is clamped to the 800×600 offscreen screen)
        finally:
            second.bridge.shutdown()
            second.store.close()
    finally:
        win.bridge.shutdown()
        win.store.close()


def test_single_instance_in_process(qtbot, tmp_path) -> None:
    first, second = SingleInstance(tmp_path), SingleInstance(tmp_path)
    assert first.claim()
    assert not second.claim()
    # the second side in a small process of its own: its blocking hand-over must not hold this
    # thread (PySide6 keeps the GIL in waitForReadyRead), whose event loop answers it
    code = (
        "import sys; from app.single_instance import send_to_running; "
        f"sys.exit(0 if send_to_running({second.name!r}, ['/m/x.gguf'], 10_000) else 1)"
    )
    with qtbot.waitSignal(first.received, timeout=20_000) as got:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)
    assert proc.returncode == 0
    assert got.args[0] == ["/m/x.gguf"]
    first.release()
    assert second.claim()  # the lock is free again
    second.release()


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kvdeck", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _listening(name: str, timeout: float) -> bool:
    from PySide6.QtNetwork import QLocalSocket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = QLocalSocket()
        sock.connectToServer(name)
        if sock.waitForConnected(200):
            sock.disconnectFromServer()
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_second_launch_hands_the_file_to_the_first_and_a_crash_never_blocks(
    tmp_path, smollm2_path, gemma3_path
) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "KVDECK_DATA_DIR": str(data),
        "QT_QPA_PLATFORM": "offscreen",
        "KVDECK_DEMO_MODEL": str(smollm2_path),
        "PYTHONPATH": str(ROOT),
    }
    name = server_name(data)
    first = _start(env)
    try:
        assert _listening(name, 60), "the first window never listened"
        second = _start(env, str(gemma3_path))
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0, out
        log = data / "logs"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            "a second launch handed over" in p.read_text(errors="replace") for p in data.rglob("*.log")
        ):
            time.sleep(0.2)
        assert any(str(gemma3_path.name) in p.read_text(errors="replace") for p in data.rglob("*.log")), log
    finally:
        first.kill()  # as a crash would: the lock and socket stay behind
        first.wait(30)
    third = _start(env)
    try:
        assert _listening(name, 60), "a crashed instance's lock or socket blocked the next start"
        assert third.poll() is None
    finally:
        third.terminate()
        third.wait(30)


FIRST_TURN = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

qapp = QApplication(sys.argv[:1])


def first_turn() -> None:  # the window is shown and start() has run
    print(" ".join(m for m in ("engine.cli.main", "gguf", "numpy") if m in sys.modules) or "none")
    qapp.quit()


QTimer.singleShot(0, first_turn)
from kvdeck.launcher import main

raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [[], ["not-there.gguf"]], ids=["kvdeck", "kvdeck-file"])
def test_the_window_shows_without_the_cli_gguf_or_numpy(tmp_path, args) -> None:
    """Cold start: ``kvdeck`` and ``kvdeck MODEL.gguf`` reach the shown window without importing
    the CLI's modules or the numeric stack (``import gguf`` brings numpy and yaml: together half
    a second on two cores); they come with the first model, on its inspection thread."""
    env = {
        **os.environ,
        "KVDECK_DATA_DIR": str(tmp_path),
        "KVDECK_DEMO_MODEL": "",  # no first model: nothing may import them behind the test's back
        "QT_QPA_PLATFORM": "offscreen",
        "PYTHONPATH": str(ROOT),
    }
    r = subprocess.run(
        [sys.executable, "-c", FIRST_TURN, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["none"]


def test_at_1000x700_the_narrowest_sidebar_and_memory_dock_show_everything_whole(
    qtbot, tmp_path, monkeypatch, smollm2_path
) -> None:
    """The sidebar and the Memory dock each squeezed to their minimum width in a 1000×700
    window: every sidebar button is as wide as its text wants ("Open GGUF…" was cut), and the
    dashboard does not scroll sideways (its plan table was wider than the dock): the error
    column shows the share, its bytes in the tooltip, until the dock is wide enough again."""
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
    try:
        win.resize(1000, 700)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.start()
        qtbot.waitUntil(lambda: win.width() == 1000)
        win.centralWidget().setSizes([0, 1000])  # the splitter gives the sidebar its minimum
        win.resizeDocks([win.memory], [MEMORY_MIN_WIDTH], Qt.Orientation.Horizontal)
        qtbot.waitUntil(lambda: win.memory.width() == MEMORY_MIN_WIDTH)
        QApplication.processEvents()
        buttons = win.sidebar.findChildren(QAbstractButton)
        assert win.sidebar.open_button in buttons
        assert [b.text() for b in buttons if b.text() and b.width() < b.sizeHint().width()] == []
        table = win.memory.dashboard.plan_table
        assert table.rowCount() and table.isVisible()
        sideways = [a for a in win.memory.findChildren(QScrollArea) if a.horizontalScrollBar().maximum() > 0]
        assert sideways == []
        legend = win.memory.dashboard.plan_legend  # its keys wrap to a second line, not cut off
        assert legend.height() >= legend.heightForWidth(legend.width())
        total = table.rowCount() - 1
        error = next(e for d, comp, *_, e in win.memory.dashboard.plan_rows if comp == "total")
        assert table.item(total, 3).text() == error.rpartition(" (")[2].rstrip(")")  # "+0.0 %"
        assert table.item(total, 3).toolTip() == error
        win.resize(1600, 1000)
        win.resizeDocks([win.memory], [MEMORY_WIDTH], Qt.Orientation.Horizontal)
        qtbot.waitUntil(lambda: table.item(total, 3).text() == error)
    finally:
        win.bridge.shutdown()
        win.store.close()


def test_the_get_models_dock_reopens_after_a_restart(qtbot, tmp_path, monkeypatch, smollm2_path) -> None:
    """The dock is built only when first shown (its modules cost start-up time); one left open
    at close still opens again with the next window, beside the Memory dock."""
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
    try:
        assert not win.hub.isVisible()
        win.show_hub()
        assert win.hub.isVisible()
        win.close()
    finally:
        win.bridge.shutdown()
        win.store.close()
    second = new_window(qtbot, tmp_path / "2", monkeypatch, smollm2_path)
    try:
        qtbot.waitUntil(lambda: second.hub.isVisible())
        assert second.hub in second.tabifiedDockWidgets(second.memory)
    finally:
        second.bridge.shutdown()
        second.store.close()
