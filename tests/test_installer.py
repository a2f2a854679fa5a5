"""The promise of the installers: a bundle that starts, finds its model and chats with no network.

`--self-test` is the contract: one line, exit 0, from a checkout and from the frozen bundle.
Building the bundle takes minutes, so that test runs only with ``KVDECK_TEST_BUNDLE=1``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from PySide6.QtCore import qVersion

from app.about import AboutDialog, llama_cpp_commit, version_text
from engine.core.build import gpu_backend
from tests.helpers.cli import ROOT, kvdeck

OK_LINE = re.compile(r"self-test ok: (?P<model>\S+\.gguf), (?P<n>\d+) tokens, [\d.]+ tokens/s, load [\d.]+ s")


@pytest.mark.slow
def test_self_test_from_source_prints_one_ok_line(smollm2_path):
    result = kvdeck("--self-test", env={"KVDECK_DEMO_MODEL": str(smollm2_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and OK_LINE.fullmatch(lines[0]), result.stdout
    assert OK_LINE.fullmatch(lines[0])["model"] == smollm2_path.name
    assert int(OK_LINE.fullmatch(lines[0])["n"]) > 0


@pytest.mark.slow
def test_self_test_reports_a_broken_model_in_one_line_and_exits_1(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    result = kvdeck("--self-test", env={"KVDECK_DEMO_MODEL": str(bad)})
    assert result.returncode == 1
    assert re.fullmatch(r"self-test failed: .*broken\.gguf.*\n", result.stdout), result.stdout


def test_self_test_without_a_model_fails_fast(tmp_path):
    data = tmp_path / "data"
    result = kvdeck(
        "--self-test",
        env={"KVDECK_DEMO_MODEL": str(tmp_path / "gone.gguf"), "KVDECK_DATA_DIR": str(data)},
        timeout=60,
    )
    assert (result.returncode, result.stdout.startswith("self-test failed: no demo model")) == (1, True)
    assert result.stdout.endswith(f"(details in {data / 'kvdeck.log'})\n"), result.stdout
    assert "Traceback (most recent call last)" in (data / "kvdeck.log").read_text(encoding="utf-8")


def test_version_names_every_component():
    result = kvdeck("--version", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == version_text()
    for line in (
        rf"KV Deck:\s+{re.escape(importlib.metadata.version('kvdeck'))}",
        r"llama\.cpp:\s+[0-9a-f]{7,40}",
        rf"Qt:\s+{re.escape(qVersion())}",
        rf"GPU backend:\s+{gpu_backend()}",
    ):
        assert re.search(f"^{line}$", result.stdout, re.MULTILINE), (line, result.stdout)


def test_about_dialog_shows_the_versions(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("KVDECK_DATA_DIR", str(tmp_path))
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    fields = {key: label.text() for key, label in dialog.fields.items()}
    assert fields["llama.cpp"] == llama_cpp_commit() != "unknown"
    assert fields["llama-cpp-python"] == importlib.metadata.version("llama_cpp_python")
    assert fields["Qt"] == qVersion()
    assert fields["GPU backend"] == gpu_backend()
    assert str(tmp_path) in fields["Data folder"]
    assert f"KV Deck {importlib.metadata.version('kvdeck')}" in dialog.title.text()


def test_help_menu_opens_the_about_dialog(qtbot, tmp_path):
    from app.main_window import MainWindow
    from engine.storage.store import ChatStore

    store = ChatStore(tmp_path / "chat.sqlite3")
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.about_action.trigger()
    qtbot.waitUntil(lambda: any(d.isVisible() for d in win.findChildren(AboutDialog)))
    win.close()
    store.close()


# ---------------------------------------------------------------------------------- the bundle
def _no_network_prefix() -> list[str]:
    """A command prefix that runs a program in a new network namespace (only a down loopback)."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):  # as root; as a user with user namespaces
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("cannot take the network away here (unshare -n / -rn is not permitted)")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("KVDECK_TEST_BUNDLE") != "1",
    reason="builds the PyInstaller bundle (minutes): set KVDECK_TEST_BUNDLE=1",
)
def test_linux_bundle_chats_offline(tmp_path):
    offline = _no_network_prefix()
    build = subprocess.run(
        ["installer/build-linux.sh"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    archive = ROOT / "dist" / f"kvdeck-linux-{os.uname().machine}.tar.gz"
    with tarfile.open(archive) as tar:  # test what users download, not the build folder
        tar.extractall(tmp_path, filter="tar")
    bundle = tmp_path / "kvdeck"
    for part in (
        "kvdeck",
        "install.sh",
        "share/applications/kvdeck.desktop",
        "share/mime/packages/kvdeck-gguf.xml",
        "share/icons/hicolor/256x256/apps/kvdeck.png",
    ):
        assert (bundle / part).exists(), part
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "KVDECK_DATA_DIR": str(home / "data"),
        "QT_QPA_PLATFORM": "offscreen",
    }  # nothing from this checkout or its venv

    interfaces = subprocess.run([*offline, "cat", "/proc/net/dev"], capture_output=True, text=True)
    assert [ln.split(":")[0].strip() for ln in interfaces.stdout.splitlines()[2:]] == ["lo"]
    result = subprocess.run(
        [*offline, str(bundle / "kvdeck"), "--self-test"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert OK_LINE.fullmatch(result.stdout.strip()), result.stdout

    # and the window: it comes up and loads the bundled model on its own, still offline
    window = subprocess.Popen(
        [*offline, str(bundle / "kvdeck")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = home / "data" / "kvdeck.log"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "first model ready" not in _read(log):
            assert window.poll() is None, _read(log)[-2000:]
            time.sleep(0.5)
        assert "first model ready" in _read(log), _read(log)[-2000:]
    finally:
        window.terminate()
        window.wait(30)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
