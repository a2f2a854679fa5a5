"""The window offers the sampling a model's file recommends (``general.sampling.*``) as a preset.

The values are what llama-server uses as its defaults for that model; the fields the file
lacks come from the default preset. The entry is chosen for the user only while their preset
is the default one, and exists only while such a model is the one loaded.
"""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt

from app.chat.settings_panel import MODEL, ChatSettings
from engine.core.sampling import DEFAULT_PRESET, PRESETS
from engine.gguf.inspect import recommended_sampling_of
from tests.helpers.cli import kvdeck
from tests.helpers.gguf_factory import write_llama


@pytest.fixture
def files(tmp_path):
    rec = write_llama(tmp_path / "rec.gguf", **{"general.sampling.temp": 0.3})
    plain = write_llama(tmp_path / "plain.gguf")
    return rec, plain


def test_a_model_that_recommends_sampling_adds_a_preset_with_its_values(qtbot, files):
    rec, plain = files
    panel = ChatSettings()
    qtbot.addWidget(panel)
    recommended = recommended_sampling_of(str(rec))
    assert recommended == {"temperature": pytest.approx(0.3)}

    panel.set_values({}, recommended)  # the user never chose a preset: the model's is shown
    box = panel.preset_box
    assert box.currentText() == MODEL and panel.temperature.value() == pytest.approx(0.3)
    balanced = PRESETS[DEFAULT_PRESET]
    assert (panel.top_k.value(), panel.top_p.value()) == (balanced.top_k, pytest.approx(balanced.top_p))
    tip = box.itemData(box.findText(MODEL), Qt.ItemDataRole.ToolTipRole)
    assert "general.sampling" in tip and "temperature 0.3" in tip and DEFAULT_PRESET in tip
    box.setCurrentText("Creative")
    box.setCurrentText(MODEL)  # picking it again fills the fields again
    assert panel.temperature.value() == pytest.approx(0.3)
    assert panel.values()["preset"] == MODEL

    panel.set_values({"preset": "Precise"}, recommended)  # a chosen preset stays chosen
    assert box.currentText() == "Precise" and box.findText(MODEL) >= 0

    panel.set_values({"preset": MODEL}, recommended_sampling_of(str(plain)))
    assert box.findText(MODEL) == -1 and box.currentText() == DEFAULT_PRESET
    assert [box.itemText(i) for i in range(box.count())] == [*PRESETS, "Custom"]


def test_inspect_json_shows_the_recommended_sampling(files):
    rec, plain = files
    for path, want in ((rec, {"temperature": 0.3}), (plain, {})):
        r = kvdeck("inspect", str(path), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sampling"] == pytest.approx(want)
