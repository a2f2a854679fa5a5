"""The draft picker, the pair verdict before loading, and the dashboard's speculative numbers."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.bridges.draft_picker import DraftPicker, incompatible_sentence, speculation_text, verdict_text
from app.memory.dashboard import SPEC_OFF, DashboardPanel
from engine.core.memory_types import Allocation, GiB, MemoryPlan, MiB, PlanSettings

LOAD_TIMEOUT_MS = 180_000


def _plan(n_ctx: int, weights: int, kv: int) -> MemoryPlan:
    allocs = (
        Allocation("weights", "CPU", weights),
        Allocation("kv", "CPU", kv),
        Allocation("compute", "CPU", 20 * MiB),
    )
    return MemoryPlan("analytic", PlanSettings(n_ctx=n_ctx), n_ctx, n_ctx, n_ctx, 0, allocs)


def test_verdict_and_speculation_texts():
    ok = {"compatible": True, "checks": [{"name": "vocabulary type", "ok": True, "detail": "both BPE"}]}
    assert verdict_text(ok)[0] == "✓ compatible" and "both BPE" in verdict_text(ok)[1]
    bad = {
        "compatible": False,
        "checks": [
            {"name": "vocabulary type", "ok": True, "detail": "x"},
            {"name": "token texts", "ok": False, "detail": "token 5"},
        ],
    }
    assert verdict_text(bad)[0] == "✗ not compatible" and "token texts" in verdict_text(bad)[1]
    sentence = incompatible_sentence("/m/draft.gguf", bad)  # one plain line, no rule jargon
    assert sentence.startswith("draft.gguf cannot be a draft") and "different tokens" in sentence
    assert "token 5" not in sentence and "\n" not in sentence
    stats = {
        "draft": "model",
        "n_drafted": 80,
        "n_accepted": 60,
        "n_target_decodes": 20,
        "mean_accepted": 3.0,
        "n_tokens": 80,
        "tokens_per_s": 45.0,
    }
    text = speculation_text(stats, plain_tps=30.0)
    assert "60 of 80 drafted tokens accepted (75%)" in text
    assert "mean accepted length 3.00" in text and "4.00 tokens per target decode" in text
    assert "speed-up 1.50×" in text
    assert "send a reply without drafting" in speculation_text(stats, plain_tps=None)
    assert speculation_text({"draft": "lookup"}, None).startswith("n-gram lookup")


def test_dashboard_shows_the_draft_as_its_own_bars_and_the_live_numbers(qtbot):
    panel = DashboardPanel()
    qtbot.addWidget(panel)
    target = _plan(1024, 2 * GiB, 256 * MiB)
    panel.show_plans(target, None)
    panel.show_draft_plan(_plan(1024, 200 * MiB, 24 * MiB))
    assert len(panel.draft_bars) == 1 and len(panel.plan_bars) == 1
    bar = panel.draft_bars[0]
    assert "drafter" in bar.title and "1,024-token context" in bar.title
    assert [s.label for s in bar.segments] == ["weights", "kv", "compute"]
    assert bar.scale == target.bytes_for("CPU") and "with the target" in bar.caption
    panel.show_plans(target, None)  # replanning the target keeps the draft's bars
    assert len(panel.draft_bars) == 1
    panel.show_draft_plan(None)
    assert panel.draft_bars == []
    assert panel.spec_label.text() == SPEC_OFF
    panel.show_speculation("draft model: 3 of 4 drafted tokens accepted (75%)")
    assert "75%" in panel.spec_label.text()


def test_picker_emits_choices_and_shows_state_without_emitting(qtbot, tmp_path):
    picker = DraftPicker()
    qtbot.addWidget(picker)
    draft = tmp_path / "draft.gguf"
    picker.set_items([str(draft)])
    labels = [picker.combo.itemText(i) for i in range(picker.combo.count())]
    assert labels == ["none", "n-gram lookup", "draft.gguf", "Choose model…"]
    with qtbot.assertNotEmitted(picker.chosen):
        picker.show_state("model", str(draft))
    assert picker.combo.currentText() == "draft.gguf" and picker.state == ("model", str(draft))
    with qtbot.waitSignal(picker.chosen) as sig:
        picker.combo.activated.emit(1)
    assert sig.args == ["lookup", ""]
    picker.show_verdict("✓ compatible", True, "all rules")
    assert picker.verdict.text() == "✓ compatible" and picker.verdict.toolTip() == "all rules"


@pytest.mark.slow
def test_window_checks_loads_and_reports_a_draft(qtbot, tmp_path, monkeypatch, smollm2_path, gemma3_path):
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, smollm2_path, timeout_ms=LOAD_TIMEOUT_MS) as win:
        # an incompatible draft: the verdict says why, nothing is loaded
        win.drafting.choose("model", str(gemma3_path))
        qtbot.waitUntil(lambda: win.chat.draft_picker.verdict.text().startswith("✗"), timeout=LOAD_TIMEOUT_MS)
        assert "cannot be a draft" in win.banner.label.text()
        assert win.bridge.draft_mode == "" and win.chat.draft_picker.state == ("", "")
        # a compatible one: checked, then loaded with the target's context, its memory planned
        with qtbot.waitSignal(win.bridge.draftLoaded, timeout=LOAD_TIMEOUT_MS) as loaded:
            win.drafting.choose("model", str(smollm2_path))
        assert win.chat.draft_picker.verdict.text() == "✓ compatible"
        assert loaded.args[0].n_ctx == win.bridge.loaded_info.n_ctx
        assert win.memory.dashboard.draft_bars
        win.chat.input.setPlainText("Name three colours.")
        with qtbot.waitSignal(win.bridge.finished, timeout=LOAD_TIMEOUT_MS) as done:
            qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
        assert done.args[0].draft == "model" and done.args[0].n_drafted > 0
        assert "drafted tokens accepted" in win.memory.dashboard.spec_label.text()
        # back to none: plain decoding, the draft unloaded
        win.drafting.choose("", "")
        assert win.bridge.draft_mode == "" and not win.memory.dashboard.draft_bars


@pytest.mark.slow
def test_the_fits_together_check_keeps_the_windows_margins(qtbot, tmp_path, monkeypatch, smollm2_path):
    """The draft picker's memory rule is a fit like the window's others: with "Keep free in RAM"
    larger than RAM can ever spare, target and draft do not fit together, and the verdict says
    so; with no margin the same pair is compatible (the CLI's defaults would have said so both
    times)."""
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, smollm2_path, timeout_ms=LOAD_TIMEOUT_MS) as win:
        picker, panel = win.chat.draft_picker, win.memory.cache
        panel.cpu_margin.setValue(1 << 20)  # 1 TiB
        win.drafting.choose("model", str(smollm2_path))
        qtbot.waitUntil(lambda: picker.verdict.text().startswith("✗"), timeout=LOAD_TIMEOUT_MS)
        assert "✗ memory:" in picker.verdict.toolTip()
        assert win.bridge.draft_mode == ""
        panel.cpu_margin.setValue(0)
        with qtbot.waitSignal(win.bridge.draftLoaded, timeout=LOAD_TIMEOUT_MS):
            win.drafting.choose("model", str(smollm2_path))
        assert picker.verdict.text() == "✓ compatible"
        assert "✓ memory: target and draft fit together" in picker.verdict.toolTip()
        win.drafting.choose("", "")
