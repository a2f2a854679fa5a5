"""engine.hub and ``kvdeck hub`` against a fake Hub on 127.0.0.1 (tests/helpers/hub_server.py).

Covers: search -> files -> a verdict equal to `kvdeck fit` on the same file locally, read
from a small fraction of the file; split models; downloads that resume after a dropped
connection and after kill -9, checked by sha256; and every failure as one line.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.core.errors import KvDeckError
from engine.core.memory_types import Device
from engine.gguf.inspect import inspect_gguf
from engine.hub import client, download, names, remote
from engine.hub import verdict as hv
from engine.hub.jobs import DownloadQueue
from engine.storage.library import scan_models
from tests.helpers.gguf_factory import split_llama, write_llama
from tests.helpers.hub_server import COMMIT, FakeHub

ROOT = Path(__file__).resolve().parents[1]
SMOL = "kvdeck-test/SmolLM2-135M-Instruct-GGUF"
TINY = "kvdeck-test/tiny-llama-GGUF"
DL = "kvdeck-test/dl-GGUF"
GiB = 1 << 30


def _huge_tensor(path: Path) -> Path:
    """A GGUF whose token_embd claims 2^52 rows (2^60 bytes and more)."""
    write_llama(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"token_embd.weight") + len(b"token_embd.weight")
    assert int.from_bytes(data[at : at + 4], "little") == 2
    data[at + 12 : at + 20] = (1 << 52).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def fake_hub(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("hub-files")
    hub = FakeHub()
    hub.add(SMOL, "SmolLM2-135M-Instruct-Q4_1.gguf", smollm2_path, downloads=5000)
    hub.add(TINY, "tiny-llama-F16.gguf", write_llama(d / "tiny-llama-F16.gguf", n_layer=4))
    (d / "split").mkdir()
    for p in split_llama(d / "split", n_layer=4):
        hub.add(TINY, f"split/{p.name}", p)
    hub.add(TINY, "mmproj-tiny-F16.gguf", d / "tiny-llama-F16.gguf")
    hub.add(
        DL,
        "dl-F16.gguf",
        write_llama(d / "dl-F16.gguf", n_layer=2, n_embd=512, n_head=8, n_head_kv=4, n_ff=1536),
    )
    hub.add("kvdeck-test/gated-GGUF", "g-Q4_0.gguf", d / "tiny-llama-F16.gguf", gated=True)
    (d / "notes.gguf").write_bytes(b"<html><body>not a model</body></html>" * 3000)
    hub.add("kvdeck-test/bad-GGUF", "notes-Q4_0.gguf", d / "notes.gguf")
    hub.add("kvdeck-test/bad-GGUF", "huge-tensor-F16.gguf", _huge_tensor(d / "huge.gguf"))
    hub.add("kvdeck-test/bad-GGUF", "huge-Q4_K_M.gguf", d / "tiny-llama-F16.gguf", claimed_size=1 << 50)
    hub.local = d  # type: ignore[attr-defined]
    hub.start()
    yield hub
    hub.stop()


def _model(repo: str, wanted: str) -> names.RemoteModel:
    found = names.find_model(list(client.list_files(repo).models), wanted)
    assert found is not None
    return found


def _fit_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    main(["fit", str(path), "--json"])
    return json.loads(capsys.readouterr().out)


# --- names -----------------------------------------------------------------------------------


def test_names_group_parts_and_label_quants_and_companions() -> None:
    files = [
        names.RemoteFile(n, 10, None)
        for n in (
            "Q8_0/M-Q8_0-00002-of-00002.gguf",
            "Q8_0/M-Q8_0-00001-of-00002.gguf",
            "M-UD-Q4_K_XL.gguf",
            "mmproj-M-F16.gguf",
            "M-IQ3_XXS.gguf",
            "M-MTP-Q8_0.gguf",
            "M-assistant-Q4_0.gguf",
            "README.md",
            "../evil.gguf",
            "M-Q2_K-00001-of-00003.gguf",
        )
    ]
    models = {m.name: m for m in names.group_files("o/r", files)}
    split = models["Q8_0/M-Q8_0.gguf"]
    assert [f.name for f in split.files] == [
        "Q8_0/M-Q8_0-00001-of-00002.gguf",
        "Q8_0/M-Q8_0-00002-of-00002.gguf",
    ]
    assert split.complete and split.size == 20 and split.quant == "Q8_0"
    assert not models["M-Q2_K.gguf"].complete
    assert models["M-UD-Q4_K_XL.gguf"].quant == "Q4_K_XL"
    assert models["M-IQ3_XXS.gguf"].quant == "IQ3_XXS"
    assert models["mmproj-M-F16.gguf"].role == "mmproj"
    assert models["M-MTP-Q8_0.gguf"].role == "mtp"
    assert models["M-assistant-Q4_0.gguf"].role == "draft"
    assert "../evil.gguf" not in models and "README.md" not in models
    for bad in ("a", "a/b/c", "../x", "a/..", "a b/c", "a--b/c", "a/b\n", ""):
        assert not names.valid_repo_id(bad)
    assert names.valid_repo_id("unsloth/Qwen3-8B-GGUF")


# --- search, files, verdicts -------------------------------------------------------------------


def test_search_files_and_verdict_equal_local_fit(
    hub: FakeHub, smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hits = client.search("smollm2")
    assert [h.repo for h in hits] == [SMOL] and hits[0].downloads == 5000
    assert hits[0].updated == "2026-11-02"
    listing = client.list_files(SMOL)
    assert listing.commit == COMMIT and [m.quant for m in listing.models] == ["Q4_1"]
    [cand] = hv.judge(list(listing.models))
    assert cand.error is None and cand.verdict is not None
    local = _fit_json(smollm2_path, capsys)
    v = cand.verdict
    assert (v.fits, v.n_ctx, v.n_gpu_layers) == (local["fits"], local["n_ctx"], local["n_gpu_layers"])
    assert v.type_k == local["plan"]["type_k"]
    assert v.need_bytes == local["plan"]["totals"]["total"]
    size = smollm2_path.stat().st_size
    assert 0 < cand.bytes_read < size / 20  # the header, not the weights
    again = hv.judge(list(listing.models))[0]  # the header cache answers the second time
    assert again.bytes_read == 0 and again.verdict == v


def test_gemma3_large_vocab_verdict_equals_local_fit(
    hub: FakeHub, gemma3_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gemma 3: a 262k-token vocabulary (the biggest header here) and sliding windows."""
    repo = "kvdeck-test/gemma-3-270m-GGUF"
    if repo not in hub.repos:
        hub.add(repo, "gemma-3-270m-Q4_K_M.gguf", gemma3_path)
    [cand] = hv.judge(list(client.list_files(repo).models))
    local = _fit_json(gemma3_path, capsys)
    v = cand.verdict
    assert v is not None, cand.error
    assert (v.fits, v.n_ctx, v.n_gpu_layers, v.need_bytes) == (
        local["fits"],
        local["n_ctx"],
        local["n_gpu_layers"],
        local["plan"]["totals"]["total"],
    )
    print(f"\n  gemma3: {cand.bytes_read} of {gemma3_path.stat().st_size} bytes, {cand.seconds:.3f} s")
    assert cand.bytes_read < gemma3_path.stat().st_size / 20


def test_remote_info_equals_inspect_and_verdicts_on_gpu_budgets(hub: FakeHub) -> None:
    local = inspect_gguf(hub.local / "tiny-llama-F16.gguf")  # type: ignore[attr-defined]
    stats = remote.ReadStats()
    info = remote.remote_info(_model(TINY, "tiny-llama-F16.gguf"), stats=stats)
    assert info.weight_types == local.weight_types and info.n_params == local.n_params
    assert info.tensor_bytes == local.tensor_bytes and info.weights == local.weights
    for free in (8 * GiB, 300 << 20, 1 << 20):  # fits / partial or RAM / does not fit
        devs = [Device("CPU", "cpu", 64 * GiB, 32 * GiB), Device("CUDA0", "gpu", free, free)]
        assert hv.verdict(info, devs) == hv.verdict(local, devs)
    tight = [Device("CPU", "cpu", 4 * GiB, 1 << 20)]
    v = hv.verdict(info, tight)
    assert not v.fits and v.text.startswith("does not fit: needs ")


def test_split_model_reads_every_part(hub: FakeHub) -> None:
    model = _model(TINY, "split/tiny-llama-split-F16.gguf")
    assert len(model.files) == model.n_parts > 1
    local = inspect_gguf(hub.local / "tiny-llama-F16.gguf")  # type: ignore[attr-defined]
    stats = remote.ReadStats()
    info = remote.remote_info(model, stats=stats)
    assert len(stats.header_bytes) == model.n_parts
    assert info.tensor_bytes == local.tensor_bytes and info.n_params == local.n_params
    devs = [Device("CPU", "cpu", 64 * GiB, 32 * GiB)]
    assert hv.verdict(info, devs) == hv.verdict(local, devs)


def test_cli_files_sorts_by_fit_and_labels_companions(
    hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "files", TINY, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    roles = [m["role"] for m in data["models"]]
    assert roles[-1] == "mmproj" and data["models"][-1]["verdict"] is None
    assert all(m["verdict"]["fits"] for m in data["models"][:-1])
    assert main(["hub", "files", TINY]) == 0
    out = capsys.readouterr().out
    assert "parts)" in out and "[mmproj]" in out and "fits" in out
    assert main(["hub", "search", "tiny"]) == 0
    assert TINY in capsys.readouterr().out


def test_verdict_bytes_and_time(hub: FakeHub, smollm2_path: Path) -> None:
    """Measured for the report: bytes fetched and seconds per remote verdict (cold cache)."""
    listing = client.list_files(TINY).models + client.list_files(SMOL).models
    cands = [c for c in hv.judge(list(listing), workers=1) if c.verdict is not None]
    read = [c.bytes_read for c in cands]
    for c in cands:
        print(f"\n  {c.model.name}: {c.bytes_read} of {c.model.size} bytes, {c.seconds:.3f} s")
    secs = [c.seconds for c in cands]
    print(
        f"\nverdict bytes: median {statistics.median(read)} max {max(read)}; "
        f"seconds: median {statistics.median(secs):.3f} max {max(secs):.3f}"
    )
    assert max(read) <= 4 << 20


# --- downloads -----------------------------------------------------------------------------------


def _cache() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


def test_download_into_hf_cache_found_by_library_and_not_twice(hub: FakeHub) -> None:
    model = _model(DL, "dl-F16.gguf")
    seen: list[download.Progress] = []
    [path] = download.download_model(model, on_progress=seen.append)
    assert path == _cache() / "models--kvdeck-test--dl-GGUF" / "snapshots" / COMMIT / "dl-F16.gguf"
    assert path.read_bytes() == (hub.local / "dl-F16.gguf").read_bytes()  # type: ignore[attr-defined]
    assert seen[-1].state == "done" and seen[-1].done == seen[-1].total == model.size
    assert [e.path for e in scan_models(roots=[("huggingface", _cache())]) if e.source == "huggingface"] == [
        path
    ]
    before = hub.cdn_bytes()
    assert download.download_model(model) == [path]
    assert hub.cdn_bytes() == before  # already in the cache: nothing fetched
    from huggingface_hub import hf_hub_download  # the library finds it too

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert download.download_model(model) == [path]  # offline first
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert callable(hf_hub_download)


def test_dropped_connection_resumes_in_place(hub: FakeHub) -> None:
    model = _model(DL, "dl-F16.gguf")
    size = model.size or 0
    hub.drop_after = size // 2
    [path] = download.download_model(model)
    assert path.stat().st_size == size
    assert hub.cdn_bytes() == size  # nothing fetched twice
    ranges = [r for m, p, r, _n in hub.log if m == "GET" and p.startswith("/cdn/")]
    assert ranges[-1] == f"bytes={size // 2}-"


def test_kill_9_then_resume(hub: FakeHub, tmp_path: Path) -> None:
    model = _model(DL, "dl-F16.gguf")
    size, sha = model.size or 0, model.files[0].sha256
    hub.throttle_bps = size / 6
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from engine.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "hub", "get", DL, "F16"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial = _cache() / "models--kvdeck-test--dl-GGUF" / "blobs" / f"{sha}.incomplete"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and partial.stat().st_size > size * 0.4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = partial.stat().st_size
    assert 0 < kept < size
    assert not any(e.source == "huggingface" for e in scan_models(roots=[("huggingface", _cache())]))
    hub.throttle_bps = None
    while not hub.log and time.monotonic() < deadline:  # the killed transfer, once noticed
        time.sleep(0.05)
    before = hub.cdn_bytes()
    [path] = download.download_model(model)
    again = hub.cdn_bytes() - before
    print(f"\nkill -9 at {kept} of {size} bytes; fetched again: {again} (= the rest)")
    assert again == size - kept
    assert path.read_bytes() == (hub.local / "dl-F16.gguf").read_bytes()  # type: ignore[attr-defined]


def test_corrupted_byte_is_caught_and_nothing_offered(hub: FakeHub) -> None:
    hub.corrupt_at = 5000
    with pytest.raises(KvDeckError, match="sha256"):
        download.download_model(_model(DL, "dl-F16.gguf"))
    store = _cache() / "models--kvdeck-test--dl-GGUF"
    assert not list((store / "blobs").iterdir())  # partial deleted, no blob
    assert not (store / "snapshots").exists()
    assert not scan_models(roots=[("huggingface", _cache())], recent=[]) or all(
        e.source != "huggingface" for e in scan_models(roots=[("huggingface", _cache())])
    )


def test_disk_full_refused_before_any_byte(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "get", "kvdeck-test/bad-GGUF", "huge-Q4_K_M.gguf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: not enough disk space for ")
    assert hub.cdn_bytes() == 0


def test_queue_runs_in_order_reports_progress_and_cancels(hub: FakeHub) -> None:
    events: list[tuple[int, str]] = []
    q = DownloadQueue(on_change=lambda j: events.append((j.id, j.state)))
    hub.throttle_bps = 20 << 20
    a = q.add(_model(DL, "dl-F16.gguf"))
    b = q.add(_model(TINY, "tiny-llama-F16.gguf"))
    c = q.add(_model(TINY, "split/tiny-llama-split-F16.gguf"))
    q.cancel(c, discard=True)
    assert q.wait(a, 60) and q.wait(b, 60) and q.wait(c, 1)
    q.close()
    assert (a.state, b.state, c.state) == ("done", "done", "cancelled")
    assert a.path is not None and a.path.is_file() and a.progress is not None
    assert a.progress.done == a.progress.total
    assert events.index((a.id, "done")) < events.index((b.id, "running"))


def test_cancel_keeps_no_visible_half_file(hub: FakeHub) -> None:
    hub.throttle_bps = 2 << 20
    q = DownloadQueue()
    job = q.add(_model(DL, "dl-F16.gguf"))
    deadline = time.monotonic() + 30
    while (job.progress is None or job.progress.done == 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    q.cancel(job, discard=True)
    assert q.wait(job, 30) and job.state == "cancelled"
    q.close()
    assert not [p for p in _cache().rglob("*") if p.is_file() and not p.name.endswith(".lock")]


# --- failures: one line, exit 2, nothing written outside the caches -----------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["hub", "get", "kvdeck-test/gated-GGUF", "g-Q4_0.gguf"], "is gated"),
        (["hub", "get", DL, "missing-Q4_0.gguf"], "has no GGUF model 'missing-Q4_0.gguf'"),
        (["hub", "files", "kvdeck-test/nope"], "no such repository"),
        (["hub", "files", "../../etc/passwd"], "is not a Hub repository id"),
        (["hub", "files", "a b/c"], "is not a Hub repository id"),
    ],
)
def test_refusals_are_one_line(
    hub: FakeHub, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_missing_file_via_resolve_is_one_line(hub: FakeHub) -> None:
    with pytest.raises(KvDeckError, match="no such file in the repository"):
        download.download_file(DL, "missing-Q4_0.gguf")
    gated = names.RemoteFile("g-Q4_0.gguf", 1000, None)
    with pytest.raises(KvDeckError, match="is gated"):
        remote.fetch_header("kvdeck-test/gated-GGUF", gated)


def test_token_opens_gated_repo_and_never_reaches_the_cdn(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_kvdeck_test_token")
    model = _model("kvdeck-test/gated-GGUF", "g-Q4_0.gguf")
    [cand] = hv.judge([model])
    assert cand.verdict is not None and cand.verdict.fits, cand.error
    [path] = download.download_model(model)
    assert path.is_file() and hub.cdn_bytes() > 0
    assert hub.cdn_auth == []


def test_html_instead_of_json(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.html_api = True
    for argv in (["hub", "search", "x"], ["hub", "files", TINY]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "did not answer with JSON" in err[0]


def test_bad_files_get_a_sentence_and_write_nothing(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cands = {c.model.name: c for c in hv.judge(list(client.list_files("kvdeck-test/bad-GGUF").models))}
    assert cands["notes-Q4_0.gguf"].error == "notes-Q4_0.gguf is not a GGUF file (bad magic)"
    assert "token_embd.weight" in (cands["huge-tensor-F16.gguf"].error or "")
    for name in ("notes-Q4_0.gguf", "huge-tensor-F16.gguf"):
        c = cands[name]
        assert c.verdict is None and c.error and "\n" not in c.error, c
        sha = c.model.files[0].sha256
        assert not (remote.header_cache_dir() / f"{sha}.gguf-header").exists()
    # a sibling claiming 1 PiB: its header is judged (a few hundred KB read), its download
    # refused for disk space (test_disk_full_refused_before_any_byte)
    assert cands["huge-Q4_K_M.gguf"].bytes_read < 1 << 20
    assert not (tmp_path / "hf").exists()  # and nothing in the HF cache


def test_offline_and_unreachable_fail_fast(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["hub", "search", "x"]) == 2
    assert "cannot be reached: offline mode" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    for argv in (["hub", "search", "x"], ["hub", "files", TINY], ["hub", "get", DL, "F16"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be reached" in err[0], err
    assert time.monotonic() - start < 10
