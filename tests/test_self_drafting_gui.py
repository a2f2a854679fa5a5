"""Self-drafting in the window (issue 19): the draft picker offers the model's own MTP heads and the
Gemma 4 assistants found for it; choosing the heads reloads the model with them and drafts; the
dashboard shows acceptance per draft position and the speed-up. Tiny random-weight models: greedy
identity and the wording are checked, never acceptance itself.
"""

from __future__ import annotations

import shutil

import pytest
from PySide6.QtCore import Qt

from app.bridges.draft_picker import speculation_text
from app.bridges.self_drafting import find_assistants, mtp_label
from engine.core.memory_types import COMPONENTS, MiB
from engine.core.units import acceptance_by_position
from tests.helpers import mtp_models as mm

LOAD_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtp-gui")
    (d / "gemma4").mkdir()  # the pair in its own folder, the assistant beside its target
    return {
        "hyv3": mm.write_hyv3(d / "hyv3.gguf"),
        "g4": mm.write_gemma4_target(d / "gemma4" / "g4.gguf"),
        "g4a": mm.write_gemma4_assistant(d / "gemma4" / "g4a.gguf"),
    }


def test_acceptance_is_worded_per_draft_position():
    assert acceptance_by_position([120, 86, 40, 10], [86, 44, 12, 1]) == (
        "acceptance by draft position: 1st 72% of 120, 2nd 51% of 86, 3rd 30% of 40, 4th 10% of 10"
    )
    assert acceptance_by_position([], []) == ""
    stats = {"draft": "mtp", "n_drafted": 10, "n_accepted": 5, "drafted_at": [6, 4], "accepted_at": [4, 1]}
    text = speculation_text({**stats, "tokens_per_s": 30.0}, plain_tps=20.0)
    assert text.startswith("the model's own MTP heads: 5 of 10")
    assert "speed-up 1.50×" in text and "1st 67% of 6, 2nd 25% of 4" in text


def test_assistants_are_found_beside_the_model_by_architecture(models, tmp_path):
    renamed = tmp_path / "nothing-in-the-name.gguf"
    shutil.copy(models["g4a"], renamed)
    found = find_assistants(str(models["g4"]), library=[str(renamed), str(models["hyv3"])])
    assert found == [str(models["g4a"]), str(renamed)]
    assert find_assistants(str(models["hyv3"]), library=[]) == []
    assert mtp_label(1) == "the model's own MTP heads (1 layer)"


def _assert_predicted_matches_measured(win, components=(*COMPONENTS, None)) -> None:
    """Every component of the dashboard's prediction within 3 % of what llama.cpp logged (or the
    log's 0.01 MiB resolution), so the two sides hold the same contexts."""
    predicted, measured = win.memory.dashboard.compared
    assert predicted is not None and measured is not None
    for device in measured.devices():
        for comp in components:
            pred, meas = predicted.bytes_for(device, comp), measured.bytes_for(device, comp)
            assert abs(pred - meas) <= max(0.03 * meas, MiB // 100), (device, comp, pred, meas)


def _labels(win) -> list[str]:
    combo = win.chat.draft_picker.combo
    return [combo.itemText(i) for i in range(combo.count())]


def test_window_drafts_with_the_models_own_mtp_heads(qtbot, tmp_path, monkeypatch, models):
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, models["hyv3"], timeout_ms=LOAD_TIMEOUT_MS) as win:
        qtbot.waitUntil(lambda: mtp_label(3) in _labels(win), timeout=LOAD_TIMEOUT_MS)
        with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS) as reloaded:
            win.drafting.choose("mtp", "")  # the heads load with the model: a reload
        assert reloaded.args[0].mtp == "ready" and win.chat.draft_picker.state == ("mtp", "")
        assert win.memory.dashboard.draft_bars  # the drafting context's memory, planned
        # the log holds the heads' context too, so the prediction it is set against does
        qtbot.waitUntil(lambda: win.memory.dashboard.compared[0] is not win.memory.predicted, timeout=5_000)
        _assert_predicted_matches_measured(win)
        # and the drafting context on its own: its bars, predicted and as logged at load
        dock = win.memory
        titles = [bar.toolTip() for bar in dock.dashboard.draft_bars]
        assert any(t.startswith("CPU · drafter (measured at load)") for t in titles), titles
        for comp in ("kv", "compute"):
            pred, meas = dock.draft_plan.bytes_for("CPU", comp), dock.measured_draft.bytes_for("CPU", comp)
            assert abs(pred - meas) <= 0.03 * meas, (comp, pred, meas)
        assert win.memory.cache.drafter == ("mtp", "")  # the context fit makes room for the heads
        # its title, elided where the dock is narrow, is whole in the tooltip
        assert win.memory.dashboard.draft_bars[0].toolTip().startswith("CPU · drafter (predicted, ")
        # legible at 1000×700 beside the Memory dock: the model's name gives way (the status bar
        # holds it too), the entry ends in "…" where it must, and its tooltip is whole
        combo = win.chat.draft_picker.combo
        win.resize(1000, 700)
        win.memory.show()
        words = combo.fontMetrics().horizontalAdvance("the model's own MTP heads")
        qtbot.waitUntil(lambda: combo.width() > words, timeout=5_000)
        assert combo.toolTip().startswith(mtp_label(3))
        win.resize(1600, 1000)  # where the row has room, whole
        whole = combo.fontMetrics().horizontalAdvance(mtp_label(3))
        assert combo.sizeHint().width() > whole  # asks for it, beyond the narrow layout's cap
        qtbot.waitUntil(lambda: combo.width() > whole, timeout=5_000)
        win.chat.input.setPlainText("w1 w2 w3")
        with qtbot.waitSignal(win.bridge.finished, timeout=LOAD_TIMEOUT_MS) as done:
            qtbot.mouseClick(win.chat.send_button, Qt.MouseButton.LeftButton)
        assert done.args[0].draft == "mtp" and done.args[0].n_drafted > 0
        text = win.memory.dashboard.spec_label.text()
        assert "the model's own MTP heads" in text and "acceptance by draft position: 1st" in text


def test_window_offers_the_assistant_beside_a_gemma4_and_loads_it(qtbot, tmp_path, monkeypatch, models):
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, models["g4"], timeout_ms=LOAD_TIMEOUT_MS) as win:
        qtbot.waitUntil(lambda: "Gemma 4 assistant: g4a.gguf" in _labels(win), timeout=LOAD_TIMEOUT_MS)
        assert not any("MTP heads" in label for label in _labels(win))  # a Gemma 4 has none
        with qtbot.waitSignal(win.bridge.draftLoaded, timeout=LOAD_TIMEOUT_MS) as loaded:
            win.drafting.choose("model", str(models["g4a"]))
        assert loaded.args[0].n_ctx == win.bridge.loaded_info.n_ctx
        # the assistant's context is not in the target's log. Weights are left out: the plan counts
        # the tied output's copy of token_embd that gemma4 makes without mmap, but the runtime maps
        # the file and the copy shares its bytes (0.77 MiB predicted, 0.69 MiB logged)
        _assert_predicted_matches_measured(win, ("kv", "compute", "output"))
        assert win.chat.draft_picker.verdict.text() == "✓ compatible"


def test_an_assistant_for_another_target_is_one_line_and_nothing_loads(qtbot, tmp_path, monkeypatch, models):
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, models["hyv3"], timeout_ms=LOAD_TIMEOUT_MS) as win:
        win.drafting.choose("model", str(models["g4a"]))
        qtbot.waitUntil(lambda: win.chat.draft_picker.verdict.text().startswith("✗"), timeout=LOAD_TIMEOUT_MS)
        banner = win.banner.label.text()
        assert "g4a.gguf cannot be a draft" in banner and "\n" not in banner
        assert win.bridge.draft_mode == "" and win.bridge.loaded_info is not None
