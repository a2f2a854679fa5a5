"""The "Get models" pane (app.hub) against the fake Hub on 127.0.0.1: no test reaches the internet.

Search -> files -> the verdict shown equals the engine's verdict on the same file; a download
through the pane lands in the sidebar's library and loads in the window; cancel leaves no
file; a slow Hub never freezes the window; no network, offline mode and every Hub error are
one line in the pane.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from app.hub import text
from app.hub.files_view import NAME, ROLE, VERDICT
from app.hub.pane import HubPane
from engine.core.memory_types import Device
from engine.hub import client
from engine.hub import verdict as hv
from engine.hub.download import Progress
from tests.helpers.gguf_factory import split_llama, write_llama
from tests.helpers.gui import LOAD_TIMEOUT_MS, new_window
from tests.helpers.hub_server import FakeHub

SMOL = "kvdeck-test/SmolLM2-135M-Instruct-GGUF"
TINY = "kvdeck-test/tiny-llama-GGUF"
DL = "kvdeck-test/dl-GGUF"
GiB = 1 << 30
DEVICES = [Device("CPU", "cpu", 64 * GiB, 32 * GiB), Device("CUDA0", "gpu", 8 * GiB, 8 * GiB)]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def fake_hub(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("hub-pane-files")
    hub = FakeHub()
    hub.add(SMOL, "SmolLM2-135M-Instruct-Q4_1.gguf", smollm2_path, downloads=5000, likes=42)
    tiny = write_llama(d / "tiny-llama-F16.gguf", n_layer=4)
    hub.add(TINY, "tiny-llama-F16.gguf", tiny, downloads=1200)
    (d / "split").mkdir()
    for p in split_llama(d / "split", n_layer=4):
        hub.add(TINY, f"split/{p.name}", p)
    hub.add(TINY, "mmproj-tiny-F16.gguf", tiny)
    hub.add(
        DL,
        "dl-F16.gguf",
        write_llama(d / "dl-F16.gguf", n_layer=2, n_embd=512, n_head=8, n_head_kv=4, n_ff=1536),
    )
    hub.add("kvdeck-test/gated-GGUF", "g-Q4_0.gguf", tiny, gated=True)
    (d / "notes.gguf").write_bytes(b"<html><body>not a model</body></html>" * 3000)
    hub.add("kvdeck-test/bad-GGUF", "notes-Q4_0.gguf", d / "notes.gguf")
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def pane(qtbot) -> HubPane:
    p = HubPane(lambda: DEVICES)
    qtbot.addWidget(p)
    p.resize(1100, 800)
    p.show()
    yield p
    p.downloads.close_queue()


def _search(qtbot, pane: HubPane, query: str) -> None:
    pane.query.setText(query)
    qtbot.keyClick(pane.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not pane.searching, timeout=WAIT_MS)


def _open(qtbot, pane: HubPane, repo: str) -> None:
    pane.open_repo(repo)
    qtbot.waitUntil(
        lambda: pane.files.listing is not None and not pane.files.judging or pane.problem is not None,
        timeout=WAIT_MS,
    )


def _rows(pane: HubPane) -> list[tuple[str, str, str]]:
    t = pane.files.tree
    rows = [t.topLevelItem(i) for i in range(t.topLevelItemCount())]
    for r in rows:  # what the user reads: the name, then the verdict on the second line
        assert r.text(NAME).endswith("\n" + r.data(NAME, VERDICT))
    return [(r.data(NAME, Qt.ItemDataRole.UserRole), r.text(ROLE), r.data(NAME, VERDICT)) for r in rows]


def _cache_files(hub_home: Path) -> list[Path]:
    return [p for p in hub_home.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


# --- search -> files -> verdicts ------------------------------------------------------------------


def test_search_files_and_verdicts_equal_the_engine(
    qtbot, hub: FakeHub, pane: HubPane, monkeypatch: pytest.MonkeyPatch
) -> None:
    _search(qtbot, pane, "tiny")
    assert pane.problem is None and pane.results.topLevelItemCount() == 1
    item = pane.results.topLevelItem(0)
    assert [item.text(c) for c in range(4)] == [TINY, "1.2k", "5", "2026-11-02"]
    streamed: list[str] = []
    real = pane.files._on_candidate
    monkeypatch.setattr(
        pane.files, "_on_candidate", lambda ticket, c: (streamed.append(c.model.name), real(ticket, c))
    )
    with qtbot.waitSignal(pane.files.verdictsDone, timeout=WAIT_MS):
        pane.results.setCurrentItem(item)  # selecting the repository lists and judges it
    engine = hv.judge(list(client.list_files(TINY).models), devices=DEVICES)
    assert _rows(pane) == [(c.model.name, text.role_text(c.model.role), text.verdict_text(c)) for c in engine]
    assert sorted(streamed) == sorted(c.model.name for c in engine)  # each as it arrived
    assert any(c.verdict is not None and c.verdict.fits for c in engine)
    assert _rows(pane)[-1][1] == "vision projector"
    split = pane.files.row_of("split/tiny-llama-split-F16.gguf")
    assert (
        split is not None
        and split.childCount() > 1
        and split.text(NAME).split("\n")[0].endswith(f" · {split.childCount()} parts")
    )
    assert "fit this machine" in pane.status.text()


# --- download, library, load ------------------------------------------------------------------------


def test_download_lands_in_the_library_and_loads(
    qtbot, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_path: Path
) -> None:
    win = new_window(qtbot, tmp_path, monkeypatch, smollm2_path)
    try:
        win.get_models_action.trigger()
        assert win.hub.isVisible()
        pane = win.hub.pane
        _search(qtbot, pane, "smollm2")
        with qtbot.waitSignal(pane.files.verdictsDone, timeout=WAIT_MS):
            pane.results.setCurrentItem(pane.results.topLevelItem(0))
        name = "SmolLM2-135M-Instruct-Q4_1.gguf"
        button = pane.files.button_for(name)
        assert button is not None and button.text() == "Download"
        with qtbot.waitSignal(pane.modelReady, timeout=WAIT_MS) as ready:
            qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        path = ready.args[0]
        assert Path(path).read_bytes() == smollm2_path.read_bytes()
        [row] = pane.downloads.rows.values()
        assert row.job.state == "done" and row.button.text() == "Load"
        assert row.status.text().startswith("done")
        models = win.sidebar.models
        qtbot.waitUntil(
            lambda: any(models.item(i).data(Qt.ItemDataRole.UserRole) == path for i in range(models.count())),
            timeout=WAIT_MS,
        )
        load = pane.files.button_for(name)
        assert load is not None and load.text() == "Load"
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS) as loaded:
            qtbot.mouseClick(load, Qt.MouseButton.LeftButton)
        assert loaded.args[0].path == path
        # listed again later (a new search, another start): the cache answers "Load"
        _open(qtbot, pane, SMOL)
        assert pane.files.button_for(name).text() == "Load"
    finally:
        win.close()
        win.store.close()


def test_cancel_leaves_no_file(qtbot, hub: FakeHub, pane: HubPane, tmp_path: Path) -> None:
    hub.throttle_bps = 2 << 20
    _open(qtbot, pane, DL)
    qtbot.mouseClick(pane.files.button_for("dl-F16.gguf"), Qt.MouseButton.LeftButton)
    assert pane.files.button_for("dl-F16.gguf").text() == "In queue"
    [row] = pane.downloads.rows.values()
    qtbot.waitUntil(lambda: row.job.progress is not None and row.job.progress.done > 0, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: " left" in row.status.text() or "/s" in row.status.text(), timeout=WAIT_MS)
    with qtbot.waitSignal(pane.downloads.finished, timeout=WAIT_MS):
        qtbot.mouseClick(row.button, Qt.MouseButton.LeftButton)
    assert row.job.state == "cancelled" and row.button.text() == "Clear"
    assert _cache_files(tmp_path / "hf") == []
    assert pane.files.button_for("dl-F16.gguf").text() == "Download"
    qtbot.mouseClick(row.button, Qt.MouseButton.LeftButton)  # Clear removes the row
    assert pane.downloads.rows == {}


# --- never blocking, always one line -----------------------------------------------------------------


def test_slow_hub_never_freezes_the_window(qtbot, hub: FakeHub, pane: HubPane) -> None:
    hub.api_delay_s = 2.0
    ticks: list[float] = []
    probe = QTimer()
    probe.timeout.connect(lambda: ticks.append(time.monotonic()))
    probe.start(20)
    try:
        pane.query.setText("tiny")
        start = time.monotonic()
        qtbot.keyClick(pane.query, Qt.Key.Key_Return)
        assert time.monotonic() - start < 0.5 and pane.searching
        qtbot.waitUntil(lambda: len(ticks) >= 25, timeout=1500)
        assert pane.searching, "the search ended before the probe could run: not slow enough"
        assert "Searching" in pane.status.text()
        qtbot.waitUntil(lambda: not pane.searching, timeout=WAIT_MS)
        start = time.monotonic()
        pane.open_repo(TINY)  # the listing waits on the slow API too
        assert time.monotonic() - start < 0.5
        qtbot.waitUntil(lambda: pane.files.listing is not None, timeout=WAIT_MS)
    finally:
        probe.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert pane.results.topLevelItemCount() == 1
    assert max(gaps) < 0.5, f"the GUI thread stalled for {max(gaps):.2f} s"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot be reached"),  # nothing listens there
        ({"HF_HUB_OFFLINE": "1"}, "cannot be reached: offline mode is on"),
    ],
)
def test_no_network_is_one_line(
    qtbot, pane: HubPane, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _search(qtbot, pane, "qwen3")
    assert pane.problem is not None and expected in pane.problem and "\n" not in pane.problem
    assert pane.status.text() == pane.problem
    pane.problem = None
    _open(qtbot, pane, TINY)
    assert pane.problem is not None and expected in pane.problem
    _search(qtbot, pane, "")  # the pane still answers
    assert pane.problem is None and "Type a model name" in pane.status.text()


def test_hub_errors_are_one_line(qtbot, hub: FakeHub, pane: HubPane) -> None:
    _open(qtbot, pane, "kvdeck-test/nope")
    assert "no such repository" in (pane.problem or "")
    _open(qtbot, pane, "kvdeck-test/gated-GGUF")  # listed, but its header needs a token (401)
    [(_, _, verdict)] = _rows(pane)
    assert "is gated" in verdict and "HF_TOKEN" in verdict
    _open(qtbot, pane, "kvdeck-test/bad-GGUF")
    [(_, _, verdict)] = _rows(pane)
    assert verdict == "notes-Q4_0.gguf is not a GGUF file (bad magic)"
    hub.html_api = True
    _search(qtbot, pane, "tiny")
    assert "did not answer with JSON" in (pane.problem or "")
    for line in (pane.problem or "", *(r[2] for r in _rows(pane))):
        assert "\n" not in line


# --- words -----------------------------------------------------------------------------------------


def test_words() -> None:
    assert [text.count(n) for n in (7, 1234, 56_000, 3_400_000)] == ["7", "1.2k", "56k", "3.4M"]
    assert [text.duration(s) for s in (None, 4.4, 200, 3900)] == [
        "time left unknown",
        "4 s",
        "3 min 20 s",
        "1 h 05 min",
    ]
    p = Progress("x", "downloading", 10 << 20, 40 << 20, 2 << 20, 15.0)
    assert text.progress_text(p, "running") == "10.0 MiB of 40.0 MiB · 2.0 MiB/s · 15 s left"
    assert text.progress_text(None, "queued").startswith("waiting")
    assert text.one_line("a\n  b") == "a b"
