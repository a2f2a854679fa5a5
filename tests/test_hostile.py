"""Every hostile GGUF file (tests/helpers/hostile_gguf.py) through every way in: the CLI, the runtime, the GUI.

The promise: a clear one-line error within 2 seconds, never a traceback; nothing reaches
llama.cpp that the checks up front can refuse, and what does reach it fails inside a child that
survives (or ends with a sentence) without allocating more than the plan allowed. The in-process
CLI runs batch all files through `engine.cli.main.main` (one interpreter, captured stderr); a sample
runs as real subprocesses to prove the same holds for the installed command.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from engine import protocol as P
from engine.chat.conversation import conversation_prompt
from engine.chat.template import ChatMessage
from engine.cli import main as cli
from engine.core.errors import KvDeckError, TemplateError
from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.runtime.host import RuntimeHost
from tests.helpers.hostile_gguf import Hostile, all_cases, write_all
from tests.helpers.runtime_host import running_host

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 2.0  # the promise, per command, in process
EXIT = {"inspect": (2, 2, 2), "plan": (0, 2, 2), "fit": (0, 0, 2)}  # inspect, plan, fit


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Hostile, Path]]:
    return write_all(tmp_path_factory.mktemp("hostile"))


def run_cli(*argv: str) -> tuple[int, str, str, float]:
    """`kvdeck <argv>` in this process: (exit status, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def assert_one_line_error(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err and "could not be inspected" not in err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def test_the_generator_covers_every_kind_of_hostility() -> None:
    cases = all_cases()
    kinds = Counter(c.kind for c in cases)
    assert len(cases) >= 50
    assert {
        "truncated",
        "header",
        "counts",
        "lengths",
        "shapes",
        "offsets",
        "metadata",
        "vocab",
        "utf8",
        "swa",
        "shared-kv",
        "template",
        "memory",
    } <= set(kinds)
    print(f"\n{len(cases)} hostile files: {dict(Counter(c.stage for c in cases))}")


def test_inspect_plan_fit_refuse_in_one_line_within_2s(hostile) -> None:
    worst: dict[str, float] = {}
    for case, path in hostile:
        for cmd, want in zip(("inspect", "plan", "fit"), EXIT.get(case.stage, (0, 0, 0))):
            code, _out, err, seconds = run_cli(cmd, str(path))
            worst[cmd] = max(worst.get(cmd, 0.0), seconds)
            assert code == want, (case.name, cmd, err)
            assert seconds < BOUND_S, (case.name, cmd, seconds)
            if want:
                line = assert_one_line_error(err)
                if case.stage == "inspect":
                    assert path.name in line and case.expect.lower() in line.lower(), (case.name, line)
            else:
                assert not err.strip(), (case.name, cmd, err)
    print(f"\nslowest in-process command: {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in worst.items())}")


def test_chat_refuses_before_any_runtime_starts(hostile, monkeypatch) -> None:
    """Files that inspection or the plan refuse never cost a child process."""
    started: list[str] = []
    monkeypatch.setattr(cli, "RuntimeHost", lambda *a, **k: started.append("host") or RuntimeHost())
    for case, path in hostile:
        if case.stage not in EXIT:
            continue
        code, _out, err, seconds = run_cli("chat", str(path), "--prompt", "hi")
        assert code == 2 and seconds < BOUND_S, (case.name, err, seconds)
        assert_one_line_error(err, case.expect if case.stage != "fit" else "MiB")
    assert started == []


def test_special_paths_are_refused_without_opening_them(tmp_path) -> None:
    """A device or pipe renamed .gguf must never be opened (a FIFO would block forever)."""
    (tmp_path / "zero.gguf").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "folder.gguf").mkdir()
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff\xfe-name.gguf")
    Path(odd).write_bytes(b"GGUF" + bytes(60))
    for name, fragment in (
        ("zero.gguf", "not a regular file"),
        ("pipe.gguf", "not a regular file"),
        ("folder.gguf", "directory"),
    ):
        t0 = time.perf_counter()
        with pytest.raises(KvDeckError, match=fragment):
            inspect_gguf(tmp_path / name)
        assert time.perf_counter() - t0 < 0.5
    for argv in (
        ("inspect", odd),
        ("plan", odd),
        ("chat", odd, "--prompt", "x"),
        ("inspect", str(tmp_path / "pipe.gguf")),
        ("fit", str(tmp_path / "zero.gguf")),
    ):
        code, _out, err, seconds = run_cli(*argv)
        assert code == 2 and seconds < BOUND_S
        assert_one_line_error(err)


@pytest.mark.slow
def test_cli_subprocess_sample(hostile, tmp_path) -> None:
    """The real `kvdeck` command: exit 2, exactly one line, no traceback, quickly."""
    by_name = {c.name: p for c, p in hostile}
    (tmp_path / "zero.gguf").symlink_to("/dev/zero")
    runs = [
        (cmd, by_name[n])
        for n in ("bad-magic", "weights-256GiB-sparse")
        for cmd in ("inspect", "plan", "fit", "chat")
    ]
    runs = [r for r in runs if not (r[1] == by_name["weights-256GiB-sparse"] and r[0] in ("inspect", "plan"))]
    runs += [
        ("chat", by_name["missing-tensor"]),
        ("chat", by_name["template-escape-mro"]),
        ("inspect", tmp_path / "zero.gguf"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    times = []
    for cmd, path in runs:
        extra = ("--prompt", "hi", "--max-tokens", "2", "--n-ctx", "512") if cmd == "chat" else ()
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "kvdeck", cmd, str(path), *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        times.append(time.perf_counter() - t0)
        assert r.returncode == 2, (cmd, path.name, r.stderr)
        assert_one_line_error(r.stderr)
        assert times[-1] < 15, (cmd, path.name, times[-1])  # Python + llama.cpp start on 2 busy cores
    print(f"\n{len(runs)} subprocess runs, {min(times):.2f}-{max(times):.2f} s each")


class _PeakRss:
    """Samples a process's resident memory every 10 ms, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def reset(self) -> int:
        self.peak = self.proc.memory_info().rss
        return self.peak

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.slow
def test_files_that_reach_llama_cpp(hostile, smollm2_path) -> None:
    """Every file that passes the checks up front, loaded into one runtime child: llama.cpp's
    refusals leave it alive, memory stays within the plan, hostile templates fail at rendering."""
    with running_host() as (host, _):
        rss = _PeakRss(host.pid)  # type: ignore[arg-type]
        outcomes: Counter[str] = Counter()
        for case, path in hostile:
            if case.stage not in ("load", "none", "template"):
                continue
            settings = PlanSettings(n_ctx=512)
            plan = analytic_plan(inspect_gguf(path), settings, [])
            allowed = rss.reset() + plan.bytes_for() + 64 * MiB
            t0 = time.perf_counter()
            try:
                loaded = host.load(P.LoadParams(str(path), settings), timeout=60)
            except KvDeckError as exc:
                assert case.stage == "load", (case.name, exc)
                assert "\n" not in str(exc) and time.perf_counter() - t0 < BOUND_S, (case.name, exc)
                assert host.running, host.outcome
                outcomes["refused by llama.cpp, runtime alive"] += 1
            else:
                assert case.stage != "load", case.name
                turns = [ChatMessage("user", "hi")]
                if case.stage == "template":
                    t1 = time.perf_counter()
                    with pytest.raises(TemplateError) as info:
                        conversation_prompt(loaded, "", turns)
                    assert "\n" not in str(info.value) and time.perf_counter() - t1 < BOUND_S
                    outcomes["template refused at rendering"] += 1
                else:
                    text = conversation_prompt(loaded, "", turns).text
                    assert host.generate(text, max_tokens=2, timeout=60).tokens
                    outcomes["loaded and ran"] += 1
            assert rss.peak <= allowed, (case.name, rss.peak // MiB, allowed // MiB)
        rss.stop()
        assert host.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512))).n_ctx == 512
        assert host.generate("Hello", max_tokens=2).tokens
        print(f"\nruntime outcomes: {dict(outcomes)}")


# --- the window ----------------------------------------------------------------------------------


def _no_network(*pids: int) -> None:
    """No listening socket, indeed no internet socket at all, in the app or its runtime."""
    for pid in pids:
        sockets = psutil.Process(pid).net_connections(kind="inet")
        assert sockets == [], (pid, sockets)


@pytest.mark.slow
def test_window_survives_every_hostile_drop(qtbot, tmp_path, monkeypatch, smollm2_path, hostile) -> None:
    from PySide6.QtCore import Qt, QUrl

    from tests.helpers.gui import LOAD_TIMEOUT_MS, ask, drop_url, new_window

    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path, max_tokens=4)
    store = win.store
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        win.start()
    ask(qtbot, win, "Hello")
    conv, demo, pid = win.chat.conversation_id, str(smollm2_path), win.bridge.host.pid
    before = store.messages(conv)
    _no_network(os.getpid(), pid)
    (tmp_path / "zero.gguf").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.gguf")
    (tmp_path / "dir.gguf").mkdir()
    drops = [
        (c.stage, QUrl.fromLocalFile(str(p))) for c, p in hostile if c.stage in EXIT or c.stage == "load"
    ]
    drops += [
        ("path", QUrl.fromLocalFile(str(tmp_path / n)))
        for n in ("zero.gguf", "pipe.gguf", "dir.gguf", "nope.gguf")
    ]
    drops += [("path", QUrl("http://127.0.0.1:9/model.gguf")), ("path", QUrl("ftp://example.com/m.gguf"))]
    slowest = 0.0
    for stage, url in drops:
        win.banner.hide()
        t0 = time.perf_counter()
        drop_url(win, url)
        qtbot.waitUntil(win.banner.isVisible, timeout=10_000)
        slowest = max(slowest, time.perf_counter() - t0)
        text = win.banner.label.text()
        assert text and "\n" not in text and "Traceback" not in text, (url, text)
        assert "could not be inspected" not in text and "could not be read:" not in text, text
        if stage == "load":  # llama.cpp refused it: the previous model comes back
            qtbot.waitUntil(lambda: win.bridge.loaded_info is not None, timeout=LOAD_TIMEOUT_MS)
        assert win.bridge.loaded_info is not None and win.bridge.loaded_info.path == demo, (url, text)
        assert win.model_info is not None and win.model_info.path == demo
        assert win.bridge.host.pid == pid and win.isVisible()  # the same runtime, never restarted
        assert store.messages(conv) == before
    assert slowest < BOUND_S, slowest
    print(f"\n{len(drops)} drops, slowest banner after {slowest * 1000:.0f} ms")
    # a hostile template loads, then fails in one line when the prompt is built
    template = next(p for c, p in hostile if c.name == "template-escape-mro")
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        drop_url(win, QUrl.fromLocalFile(str(template)))
    win.banner.hide()
    win.chat.input.setPlainText("hi")
    t0 = time.perf_counter()
    qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(win.banner.isVisible, timeout=5_000)
    assert time.perf_counter() - t0 < BOUND_S
    assert "chat template" in win.banner.label.text() and "\n" not in win.banner.label.text()
    assert not win.bridge.generating and store.messages(conv)[: len(before)] == before
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        drop_url(win, QUrl.fromLocalFile(demo))
    ask(qtbot, win, "Still fine?")
    assert store.messages(conv)[-1].complete
    _no_network(os.getpid(), win.bridge.host.pid)
    win.close()
    store.close()


def test_model_output_is_shown_as_text_and_nothing_is_fetched(qtbot, monkeypatch) -> None:
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QTextDocument

    from app.chat.chat_view import ChatView, ShownMessage

    asked: list[str] = []
    original = ChatView.loadResource
    monkeypatch.setattr(
        ChatView,
        "loadResource",
        lambda self, kind, url: asked.append(url.toString()) or original(self, kind, url),
    )
    view = ChatView()
    qtbot.addWidget(view)
    reply = (
        '<img src="http://127.0.0.1:9/x.png"> <script>alert(1)</script> '
        '<a href="javascript:alert(2)">y</a> ![z](http://127.0.0.1:9/z.png) <iframe src=//e.x>'
    )
    view.set_messages([ShownMessage(1, "user", reply, True), ShownMessage(2, "assistant", reply, True)])
    shown = view.toPlainText()
    assert '<img src="http://127.0.0.1:9/x.png">' in shown and "<script>alert(1)</script>" in shown
    html = view.toHtml().lower()
    for tag in ("<img", "<script", "<iframe", 'href="javascript', 'src="http'):
        assert tag not in html, tag
    assert not [u for u in asked if "127.0.0.1" in u or u.startswith(("http", "//"))], asked
    assert (
        view.loadResource(QTextDocument.ResourceType.ImageResource, QUrl("http://127.0.0.1:9/x.png")) is None
    )


def test_hostile_templates_fail_fast_without_memory_growth(smollm2_path) -> None:
    """Every hostile template, rendered directly: a TemplateError in one line, in time, and the
    process does not balloon (one C call such as 'x'.center(10**10) would take 10 GB)."""
    from engine.chat.template import render_chat
    from tests.helpers.hostile_gguf import HOSTILE_TEMPLATES

    peak = _PeakRss(os.getpid())
    for name, template in HOSTILE_TEMPLATES.items():
        rss, t0 = peak.reset(), time.perf_counter()
        with pytest.raises(TemplateError) as info:
            render_chat(template, [ChatMessage("user", "hi")])
        assert "\n" not in str(info.value) and str(info.value).startswith("the chat template"), name
        assert time.perf_counter() - t0 < BOUND_S, name
        assert peak.peak - rss < 300 * MiB, name
    peak.stop()
    real = inspect_gguf(smollm2_path).chat_template  # and real templates still work, long input too
    text = render_chat(real, [ChatMessage("user", "hi ~ %s {x} " * 5000)])
    assert text.endswith("<|im_start|>assistant\n")
