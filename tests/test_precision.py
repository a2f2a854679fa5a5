"""The KV precision check: its math, the runtime request on real models, the CLI and the view.

Real models, few prompts and few tokens: the checks that matter (f32 against itself is exact, a
4-bit cache is no better than an 8-bit one) hold at any length, and two slow cores must run this
file in a couple of minutes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from engine import protocol as P
from engine.core.errors import InvalidSettings, KvDeckError
from engine.core.memory_types import PlanSettings
from engine.core.precision_metrics import first_divergence, kl_divergence, score_prompt, summarize
from engine.core.precision_prompts import builtin_prompts, load_prompts, parse_prompts
from tests.helpers.cli import kvdeck
from tests.helpers.runtime_host import running_host

PROMPTS = [builtin_prompts()[0], builtin_prompts()[3]]  # code and German: the fragile ones
N_TOKENS = 8


# ----------------------------------------------------------------------------- math (fast)


def test_kl_of_identical_logits_is_exactly_zero():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, size=(3, 1000)).astype(np.float32)
    assert np.all(kl_divergence(logits, logits.copy()) == 0.0)


def test_kl_matches_the_closed_form_and_survives_huge_logits():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.3, 0.2])
    expected = float(np.sum(p * np.log(p / q)))
    for shift in (0.0, 1e4, -1e4):  # a naive exp() overflows or underflows here
        got = kl_divergence(np.log(p)[None] + shift, np.log(q)[None] - shift)
        assert got[0] == pytest.approx(expected, rel=1e-9)


def test_kl_treats_impossible_and_nan_as_infinite():
    ref = np.array([[0.0, 0.0, -np.inf]])
    assert kl_divergence(ref, np.array([[0.0, 1.0, 3.0]]))[0] < np.inf  # ref ignores token 2
    assert kl_divergence(ref, np.array([[0.0, -np.inf, 0.0]]))[0] == np.inf
    assert kl_divergence(ref, np.array([[np.nan, 0.0, 0.0]]))[0] == np.inf


def test_first_divergence_and_summary():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2  # stopped early: differs where it stopped
    logits = np.log(np.array([[0.6, 0.4], [0.5, 0.5]]))
    a = score_prompt(logits, logits, [0, 1], [0, 1], 3)
    b = score_prompt(logits, logits[:, ::-1], [0, 0], [1], 3)
    s = summarize([a, b])
    assert s.first_divergence == [None, 0] and s.n_positions == 4
    assert s.mean_kl == pytest.approx(b.kl_sum / 4) and 0 < s.mean_kl
    assert s.top1_agreement == 0.75  # only b's first row flips its argmax (a tie keeps index 0)


def test_prompts_are_paragraphs(tmp_path):
    text = "def f(x):\n    return x\n\n\n  \nSecond prompt.\r\n\r\nThird\n"
    assert parse_prompts(text) == ["def f(x):\n    return x", "Second prompt.", "Third"]
    f = tmp_path / "p.txt"
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(KvDeckError, match="no text"):
        load_prompts(f)
    with pytest.raises(KvDeckError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- runtime


def _host(path):
    return running_host(P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=256), n_threads=1))


@pytest.fixture(scope="module")
def smol_host(smollm2_path):
    with _host(smollm2_path) as (host, _):
        yield host


@pytest.fixture(scope="module")
def gemma_host(gemma3_path):
    with _host(gemma3_path) as (host, _):
        yield host


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smol_host", "gemma_host"])
def test_f32_against_f32_is_exact(request, which):
    host = request.getfixturevalue(which)
    progress: list[tuple[int, int]] = []
    r = host.precision(
        "f32", "f32", PROMPTS, N_TOKENS, flash_attn="off", on_progress=lambda d, t: progress.append((d, t))
    )
    assert r.first_divergence == [None, None]
    assert r.mean_kl == 0.0 or r.mean_kl < 1e-9
    assert r.max_kl < 1e-9 and r.top1_agreement == 1.0
    assert 0 < r.n_positions <= len(PROMPTS) * N_TOKENS
    assert progress and progress[-1][0] == progress[-1][1]  # the last event says "all done"
    assert all(p["reference_text"] == p["candidate_text"] for p in r.prompts)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smol_host", "gemma_host"])
def test_a_4bit_cache_is_not_better_than_an_8bit_one(request, which):
    host = request.getfixturevalue(which)
    q8 = host.precision("q8_0", "q8_0", PROMPTS, N_TOKENS, flash_attn="on")
    q4 = host.precision("q4_0", "q4_0", PROMPTS, N_TOKENS, flash_attn="on")
    assert q4.reference_cached  # the f32 references were generated once, for an earlier check
    assert q4.n_positions == q8.n_positions  # the same reference continuations
    assert q4.mean_kl >= q8.mean_kl > 0.0
    assert q4.top1_agreement <= 1.0 and len(q4.first_divergence) == len(PROMPTS)


@pytest.mark.slow
def test_the_reference_runs_without_flash_attention_because_it_rounds_f32_to_f16(smol_host):
    """With flash attention llama.cpp casts f32 K/V to f16 (llama-graph.cpp): f32 then scores
    exactly like f16, and both differ from the unrounded reference."""
    f32 = smol_host.precision("f32", "f32", PROMPTS, N_TOKENS, flash_attn="on")
    f16 = smol_host.precision("f16", "f16", PROMPTS, N_TOKENS, flash_attn="on")
    assert f32.reference_flash_attn == "off" and f32.flash_attn == "on"
    assert f32.mean_kl == f16.mean_kl > 0.0
    assert f32.first_divergence == f16.first_divergence


@pytest.mark.slow
def test_bad_requests_fail_cleanly_and_the_child_lives_on(smol_host):
    with pytest.raises(InvalidSettings, match="unknown KV cache type"):
        smol_host.precision("q9", "f16", PROMPTS, N_TOKENS)
    with pytest.raises(InvalidSettings, match="flash attention"):
        smol_host.precision("f16", "q4_0", PROMPTS, N_TOKENS, flash_attn="off")
    assert smol_host.running and smol_host.stats().loaded


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_json_contract(smollm2_path, tmp_path):
    from engine.cli.precision import kv_bytes
    from engine.gguf.inspect import inspect_gguf

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n\ndef add(a, b):\n    return", encoding="utf-8")
    r = kvdeck(
        "precision",
        str(smollm2_path),
        "--cache-type-k",
        "q8_0",
        "--cache-type-v",
        "q8_0",
        "--prompts",
        str(prompts),
        "--tokens",
        "4",
        "--threads",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["reference"]["type_k"] == data["reference"]["type_v"] == "f32"
    assert data["reference"]["flash_attn"] == "off" and data["candidate"]["flash_attn"] == "on"
    c = data["candidate"]
    for key in (
        "type_k",
        "type_v",
        "mean_kl",
        "top1_agreement",
        "first_divergence",
        "kv_bytes",
        "reference_kv_bytes",
    ):
        assert key in c
    assert (c["type_k"], c["type_v"]) == ("q8_0", "q8_0")
    assert isinstance(c["mean_kl"], float) and c["mean_kl"] >= 0
    assert 0.0 <= c["top1_agreement"] <= 1.0
    assert len(c["first_divergence"]) == 2
    assert all(d is None or isinstance(d, int) for d in c["first_divergence"])
    info = inspect_gguf(str(smollm2_path))
    assert c["kv_bytes"] == kv_bytes(info, data["n_ctx"], "q8_0", "q8_0", "on")
    assert c["reference_kv_bytes"] == kv_bytes(info, data["n_ctx"], "f32", "f32", "off")
    assert c["kv_bytes"] * 3 < c["reference_kv_bytes"]  # 34 bytes per 32 values against 128


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--cache-type-k", "q9", "--cache-type-v", "f16"), "invalid choice"),
        (("--cache-type-k", "f16"), "required"),
        (("--cache-type-k", "f16", "--cache-type-v", "q4_0", "--flash-attn", "off"), "flash attention"),
        (("--cache-type-k", "f16", "--cache-type-v", "f16", "--tokens", "0"), "--tokens"),
        (
            ("--cache-type-k", "f16", "--cache-type-v", "f16", "--prompts", "/nonexistent/p.txt"),
            "no such prompts file",
        ),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(smollm2_path, args, fragment):
    r = kvdeck("precision", str(smollm2_path), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_cli_error_for_a_missing_model():
    r = kvdeck("precision", "/nonexistent/m.gguf", "--cache-type-k", "f16", "--cache-type-v", "f16")
    assert r.returncode == 2 and r.stderr.startswith("error:")


# ----------------------------------------------------------------------------- GUI


@pytest.fixture
def source(smollm2_path):
    from app.memory.precision_view import Source
    from engine.core.memory_types import PlanSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.runtime.info import plan_devices

    settings = PlanSettings(n_ctx=2048, type_k="q8_0", type_v="q8_0", flash_attn="on")
    return Source(inspect_gguf(str(smollm2_path)), settings, plan_devices()[0])


@pytest.mark.slow
def test_view_checks_in_the_background_and_shows_memory_against_quality(qtbot, source):
    from PySide6.QtCore import QTimer

    from app.memory.precision_view import PrecisionView

    view = PrecisionView(lambda: source)
    qtbot.addWidget(view)
    view.prompts, view.n_tokens, view.alternatives, view.n_threads = PROMPTS[:1], 4, ("q4_0",), 1
    view.show()
    ticks: list[float] = []
    timer = QTimer(view, interval=50, timeout=lambda: ticks.append(time.monotonic()))
    timer.start()
    with qtbot.waitSignal(view.finished, timeout=180_000) as blocker:
        started = time.monotonic()
        view.check.click()
        click_s = time.monotonic() - started
        assert view.running and not view.check.isEnabled() and view.stop_button.isEnabled()
    timer.stop()
    assert blocker.args == [""], view.status.text()
    # the GUI thread never waited: the click returned at once and the event loop kept running
    assert click_s < 1.0 and len(ticks) >= 3
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 3.0
    # chosen q8_0, the alternative q4_0, f16 because it matches the weights, f32 as reference
    labels = [view.table.item(i, 0).text() for i in range(view.table.rowCount())]
    assert labels == ["f32", "q8_0", "q4_0", "f16"]
    notes = {labels[i]: view.table.item(i, 5).text() for i in range(len(labels))}
    assert "chosen" in notes["q8_0"] and "★" in notes["f16"] and "reference" in notes["f32"]
    assert view.table.item(1, 0).font().bold()
    assert "2,048" in view.table.horizontalHeaderItem(1).text()
    kv = {p.label: p.kv_mib for p in view.chart.points}
    assert kv["f32"] > kv["f16"] > kv["q8_0"] > kv["q4_0"] > 0
    assert view.chart.points[0].mean_kl == 0.0 and all(
        p.mean_kl is not None and p.mean_kl >= 0 for p in view.chart.points
    )
    assert sum(p.matched for p in view.chart.points) == 1
    assert not view.chart.grab().isNull()  # paints without warnings
    assert view.check.isEnabled() and not view.progress.isVisible()


@pytest.mark.slow
def test_stop_ends_the_check_and_its_runtime(qtbot, source):
    from app.memory.precision_view import PrecisionView

    view = PrecisionView(lambda: source)
    qtbot.addWidget(view)
    view.prompts, view.n_tokens = PROMPTS[:1], 4
    view.check.click()
    job = view.job
    qtbot.waitUntil(lambda: job._host is not None and job._host.pid is not None, timeout=30_000)
    view.stop()
    assert view.check.isEnabled() and view.status.text().startswith("Stopped")
    assert job.wait(30)
    assert not job._host.running


def test_cache_panel_offers_the_check_for_its_own_settings(qtbot, source):
    from app.memory.cache_panel import CachePanel

    panel = CachePanel()
    qtbot.addWidget(panel)
    assert panel.quality._source() is None  # no model yet
    panel.set_model(source.info, source.settings, source.devices, "cpu")
    panel.type_k.setCurrentText("q5_1")
    got = panel.quality._source()
    assert got is not None and got.info is source.info
    assert (got.settings.type_k, got.settings.type_v) == ("q5_1", "q8_0")
    assert panel.quality.check.isEnabled()


def test_candidates_are_the_chosen_pair_then_the_alternatives(source):
    from app.memory.precision_view import candidate_pairs

    assert candidate_pairs(source) == [("q8_0", "q8_0"), ("f16", "f16"), ("q5_1", "q5_1"), ("q4_0", "q4_0")]
    mixed = source.__class__(
        source.info, source.settings.replace(type_k="q8_0", type_v="f16", split_mode="row"), source.devices
    )
    assert candidate_pairs(mixed, ("f32", "q4_0"))[:2] == [("q8_0", "f16"), ("q4_0", "q4_0")]
