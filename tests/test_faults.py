"""Faults from outside: the runtime killed at any moment, the app killed mid-save, a data folder
that is read-only or full. Nothing the user wrote may be lost, and the window must say what
happened and keep working."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PySide6.QtCore import Qt, QUrl

from app.main_window import MainWindow
from engine import protocol as P
from engine.storage.store import ChatStore
from tests.helpers.gui import LOAD_TIMEOUT_MS, ask, drop_url
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PHASES = ["decode", "load", "prefill", "decode", "prefill"] * 4  # 20 rounds, mixed
LONG_PROMPT = " ".join(f"item{i} is {['red', 'blue', 'green', 'tall', 'small'][i % 5]}" for i in range(300))


class Killer:
    """Kills the runtime child with SIGKILL from the host's reader thread, at the moment a phase
    is seen: the first load progress, 150 ms into a prefill (no `Started` yet), or the second
    streamed delta. Hooked into the bridge instance, so the window itself is untouched."""

    def __init__(self, bridge) -> None:  # noqa: ANN001
        self.bridge, self.phase, self.where = bridge, "", ""
        self.deltas: list[str] = []
        self.started = False
        self.killed = threading.Event()
        on_event, generate = bridge._on_event, bridge.generate

        def watch(msg: object) -> None:
            self._watch(msg)
            on_event(msg)

        def generate_then_time(*args: object, **kwargs: object) -> bool:
            ok = generate(*args, **kwargs)
            if ok and self.phase == "prefill":
                threading.Timer(0.15, self._kill_in_prefill).start()
            return ok

        bridge._on_event, bridge.generate = watch, generate_then_time

    def arm(self, phase: str) -> None:
        self.phase, self.where, self.deltas, self.started = phase, "", [], False
        self.killed.clear()

    def _watch(self, msg: object) -> None:
        if not self.phase or self.killed.is_set():
            return
        if isinstance(msg, P.Progress) and self.phase == "load":
            self._kill("load")
        elif isinstance(msg, P.Started):
            self.started = True
        elif isinstance(msg, P.Delta) and self.phase in ("decode", "prefill"):
            self.deltas.append(msg.text)
            if len(self.deltas) >= 2 or self.phase == "prefill":  # prefill was too quick
                self._kill("decode")

    def _kill_in_prefill(self) -> None:
        if not self.started and not self.killed.is_set():
            self._kill("prefill")

    def _kill(self, where: str) -> None:
        self.where = where
        self.killed.set()
        os.kill(self.bridge.host.pid, signal.SIGKILL)


def _snapshot(store: ChatStore) -> dict[int, list[tuple[str, str, bool]]]:
    return {
        c.id: [(m.role, m.content, m.complete) for m in store.messages(c.id)]
        for c in store.list_conversations()
    }


def test_runtime_killed_in_every_phase_twenty_times(qtbot, tmp_path, monkeypatch, smollm2_path) -> None:
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(smollm2_path))
    store = ChatStore(tmp_path / "chat.sqlite3")
    store.set_setting("preset", "Greedy (deterministic)")
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.show()
    win.chat.max_tokens.setValue(400)
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        win.start()
    killer, done, timings = Killer(win.bridge), Counter(), []
    for phase in PHASES:
        before = _snapshot(store)
        killer.arm(phase)
        t0 = time.perf_counter()
        with qtbot.waitSignal(win.bridge.exited, timeout=60_000):
            if phase == "load":
                drop_url(win, QUrl.fromLocalFile(str(smollm2_path)))
            else:
                win.chat.new_conversation()
                win.chat.input.setPlainText(LONG_PROMPT if phase == "prefill" else "Count from 1 to 300.")
                qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
        done[killer.where] += 1
        text = win.banner.label.text()
        assert win.isVisible() and win.banner.isVisible()
        assert "killed (SIGKILL)" in text and "\n" not in text, text
        assert ("loading the model" if killer.where == "load" else "generating a reply") in text
        assert win.banner.action_button.isVisible() and win.banner.action_button.text() == "Restart runtime"
        after = _snapshot(store)
        assert {k: v for k, v in after.items() if k in before} == before  # nothing earlier changed
        if killer.where != "load":
            (messages,) = [v for k, v in after.items() if k not in before]
            assert messages[0][0] == "user"
            if killer.where == "decode":  # the partial reply is kept, marked incomplete
                ((_, _), reply) = messages[0][:2], messages[1]
                assert reply[0] == "assistant" and not reply[2] and reply[1]
                assert reply[1].startswith("".join(killer.deltas))
                assert "the runtime stopped" in win.chat.view.toPlainText()  # the end reason
            else:  # killed before any text: no empty assistant bubble is left behind
                assert [m[0] for m in messages] == ["user"]
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            win.banner.action_button.click()
        assert not win.banner.isVisible() or "killed" not in win.banner.label.text()
        timings.append(time.perf_counter() - t0)
    assert sum(done.values()) == 20 and all(done[p] >= 3 for p in ("load", "prefill", "decode")), done
    win.chat.max_tokens.setValue(4)
    ask(qtbot, win, "Still there?")
    assert store.messages(win.chat.conversation_id)[-1].complete
    print(f"\nkill rounds by phase: {dict(done)}; {min(timings):.1f}-{max(timings):.1f} s per round")
    win.close()
    store.close()


def _read_promises(lines: list[str]) -> tuple[dict[int, str], dict[int, tuple[int, bool]], int | None]:
    roles, updates, runtime = {}, {}, None
    for line in lines:
        if not line.endswith("\n"):
            continue  # a line cut by the kill promises nothing
        word, *rest = line.split()
        if word == "add":
            roles[int(rest[0])] = rest[1]
        elif word == "upd":
            updates[int(rest[0])] = (int(rest[1]), rest[2] == "1")
        elif word == "runtime":
            runtime = int(rest[0])
    return roles, updates, runtime


def test_app_killed_while_saving_loses_nothing_committed(tmp_path, smollm2_path) -> None:
    """The real window (tests/helpers/fault_app.py) chats on its own; SIGKILL it at random moments while
    replies stream and are saved; every write it reported must be in a database that opens."""
    db, rng = tmp_path / "chat.sqlite3", random.Random(7)
    env = {**os.environ, "KVDECK_DEMO_MODEL": str(smollm2_path), "KVDECK_DATA_DIR": str(tmp_path)}
    promised_roles: dict[int, str] = {}
    for round_ in range(3):
        log = open(tmp_path / f"app{round_}.log", "w")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.fault_app", str(db)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines: list[str] = []
        wanted, deadline = rng.randint(2, 6), time.monotonic() + 90
        assert proc.stdout is not None
        while sum(line.startswith("upd") for line in lines) < wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(rng.random() * 0.4)  # land anywhere: between saves or in the middle of one
        proc.kill()
        lines += proc.stdout.readlines()
        proc.wait(30)
        log.close()
        roles, updates, runtime = _read_promises(lines)
        tail = (tmp_path / f"app{round_}.log").read_text()[-1500:]
        assert updates, f"round {round_}: the app saved nothing before the kill: {tail}"
        promised_roles.update(roles)
        with ChatStore(db) as store:  # opens cleanly: no repair, no error
            messages = {m.id: m for c in store.list_conversations() for m in store.messages(c.id)}
        for msg_id, role in promised_roles.items():
            assert messages[msg_id].role == role
        for msg_id, (length, complete) in updates.items():
            assert len(messages[msg_id].content) >= length and (messages[msg_id].complete or not complete)
        with contextlib.closing(sqlite3.connect(db)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if runtime is not None:  # the orphaned runtime notices its parent is gone and exits
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(runtime).wait(15)
            assert not psutil.pid_exists(runtime) or psutil.Process(runtime).status() == "zombie"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tiny RAM file system at `path` (True), or just the folder (False) when not root."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _window(qtbot, store: ChatStore, problem: str = "") -> MainWindow:  # noqa: ANN001
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.show()
    if problem:
        win.show_problem(problem, sticky=True)  # as app.gui.run does with open_store's reason
    win.chat.max_tokens.setValue(4)
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        win.start()
    return win


def test_read_only_data_folder(qtbot, tmp_path, monkeypatch, smollm2_path) -> None:
    from app.gui import open_store

    folder = tmp_path / "data"
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(smollm2_path))
    monkeypatch.setenv("KVDECK_DATA_DIR", str(folder))
    with tmpfs(folder, "4m") as mounted:
        with ChatStore(folder / "kvdeck.sqlite3") as old:
            conv = old.create_conversation("old chat")
            old.add_message(conv.id, "user", "remember me")
        if mounted:
            assert subprocess.run(["mount", "-o", "remount,ro", str(folder)]).returncode == 0
        elif os.geteuid() != 0:
            folder.chmod(0o500)
            (folder / "kvdeck.sqlite3").chmod(0o400)
        else:
            pytest.skip("cannot make a folder read-only here (root without mount)")
        store, problem = open_store()
        assert problem and "\n" not in problem and "memory" in problem, problem
        assert [m.content for m in store.messages(conv.id)] == ["remember me"]  # still visible
        win = _window(qtbot, store, problem)
        assert win.banner.isVisible() and "chat history" in win.banner.label.text()
        assert "old chat" in [c.title for c in store.list_conversations()]
        ask(qtbot, win, "Hello")  # chat works, in memory
        assert store.messages(win.chat.conversation_id)[-1].role == "assistant"
        win.close()
        if not mounted:
            folder.chmod(0o700)


def test_full_data_folder(qtbot, tmp_path, monkeypatch, smollm2_path) -> None:
    folder = tmp_path / "full"
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(smollm2_path))
    with tmpfs(folder, "2m") as mounted:
        store = ChatStore(folder / "kvdeck.sqlite3")
        win = _window(qtbot, store)
        ask(qtbot, win, "Hello")
        conv = win.chat.conversation_id
        saved = _snapshot(store)[conv]
        if mounted:  # fill the disk to the last byte
            with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        else:
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            store._conn.execute(f"PRAGMA max_page_count = {pages}")
        win.banner.hide()
        ask(qtbot, win, "Still there?")  # the reply still arrives
        text = win.banner.label.text()
        assert win.banner.isVisible() and "full" in text and "memory" in text and "\n" not in text
        assert store.in_memory and _snapshot(store)[conv][: len(saved)] == saved
        assert [m.role for m in store.messages(conv)][-2:] == ["user", "assistant"]
        win.banner.hide()
        ask(qtbot, win, "And now?")
        assert not win.banner.isVisible() and store.messages(conv)[-1].complete
        win.close()
        store.close()


def test_out_of_memory_is_refused_first_and_named_when_it_happens(smollm2_path) -> None:
    """Settings that cannot fit never reach llama.cpp; when llama.cpp is asked anyway (the host
    called directly, bypassing preflight) the failure names the component and its size, and the
    same runtime loads the next model."""
    from engine.core.errors import InvalidSettings, KvDeckError
    from engine.core.memory_types import Device, GiB, PlanSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.analytic import analytic_plan
    from engine.plan.fit import fit, preflight

    info = inspect_gguf(smollm2_path)
    ram = [Device("CPU", "cpu", 16 * GiB, 8 * GiB)]
    with pytest.raises(KvDeckError, match=r"this needs [\d,]+ MiB on CPU .*\(kv alone"):
        preflight(info, PlanSettings(n_ctx=10_000_000), ram, "cpu", plan_fn=analytic_plan)
    fitted = fit(info, PlanSettings(n_ctx=0), ram, plan_fn=analytic_plan)
    assert fitted.fits and fitted.plan.bytes_for("CPU") <= 8 * GiB
    with running_host() as (host, _):
        for params, component in (
            (P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=10_000_000)), "the KV cache"),
            (
                P.LoadParams(
                    path=str(smollm2_path),
                    settings=PlanSettings(n_ctx=65536, n_batch=65536, n_ubatch=65536, flash_attn="off"),
                ),
                "the compute buffers",
            ),
        ):
            with pytest.raises(InvalidSettings) as info_:
                host.load(params, timeout=120)
            message = str(info_.value)
            assert f"not enough memory for {component} (" in message and "GiB on CPU)" in message
            assert "\n" not in message and host.running
        assert host.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512))).n_ctx == 512
        assert host.generate("Hello", max_tokens=2).tokens


def test_allocation_failures_in_words() -> None:
    """The log lines of CUDA and host failures, as llama.cpp 0c1e570 prints them."""
    from engine.plan.alloc_failure import describe_allocation_failure as describe

    cuda = [
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "alloc_tensor_range: failed to allocate CUDA0 buffer of size 9663676416",
        "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
    ]
    assert describe(cuda) == "not enough memory for the KV cache (9.00 GiB on CUDA0)"
    assert (
        describe(
            [
                "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 2147483648",
                "graph_reserve: failed to allocate compute buffers",
            ]
        )
        == "not enough memory for the compute buffers (2.00 GiB on CUDA0)"
    )
    assert (
        describe(["llama_model_load: error loading model: unable to allocate CUDA0 buffer"])
        == "not enough memory for the model weights on CUDA0"
    )
    assert (
        describe(["output_reserve: failed to allocate output buffer of size 1024.00 MiB"])
        == "not enough memory for the output buffer (1.00 GiB)"
    )
    assert (
        describe(
            [
                "llama_init_from_model: failed to initialize the context: failed to allocate "
                "buffer for rs cache"
            ]
        )
        == "not enough memory for the recurrent state"
    )
    assert (
        describe(["llama_model_load: error loading model: check_tensor_dims: tensor 'x' not found"]) is None
    )
