"""The Memory dock in the real window: cache controls, plan updates, apply and reload."""

from __future__ import annotations

import pytest

from app.main_window import MainWindow
from app.memory.cache_panel import MARGINS_SETTING
from engine.core.memory_types import Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import fit
from engine.plan.margins import Margins
from engine.storage.identity import model_key
from engine.storage.store import ChatStore
from tests.helpers.gguf_factory import write_family
from tests.helpers.gui import LOAD_TIMEOUT_MS

pytestmark = pytest.mark.slow


def same_at_log_precision(a: int, b: int) -> bool:
    """llama.cpp prints sizes in MiB with two decimals."""
    return round(a / (1 << 20), 2) == round(b / (1 << 20), 2)


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(smollm2_path))
    store = ChatStore(tmp_path / "chat.sqlite3")
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        win.start()
    yield win
    win.close()
    store.close()


def test_first_load_uses_fitted_settings_and_shows_measured_memory(window):
    panel = window.memory.cache
    assert panel.isEnabled() and panel.type_k.currentText() == "f16"
    assert panel.fitted_ctx == 8192  # SmolLM2's training context fits easily in RAM
    measured = window.memory.measured
    predicted = window.memory.predicted
    assert measured is not None and predicted is not None
    assert same_at_log_precision(measured.bytes_for(None, "kv"), predicted.bytes_for(None, "kv"))
    assert abs(measured.bytes_for(None, "weights") - predicted.bytes_for(None, "weights")) < 1 << 20
    assert window.memory.dashboard.plan_rows  # the comparison table is filled


def test_invalid_combination_is_explained_before_loading(qtbot, window):
    panel = window.memory.cache
    panel.flash.setCurrentText("off")
    panel.type_v.setCurrentText("q4_0")
    assert not panel.problems.isHidden()  # (its tab need not be the one on screen)
    assert "flash attention" in panel.problems.text().lower()
    assert not panel.apply.isEnabled()
    panel.flash.setCurrentText("on")
    assert panel.apply.isEnabled()
    assert "flash attention" not in panel.problems.text().lower()


def test_changes_replan_at_once_and_apply_reloads(qtbot, window):
    panel = window.memory.cache
    plans = []
    panel.planChanged.connect(plans.append)
    panel.ctx_slider.setValue(4)  # 4 x 256 = 1024 tokens
    assert plans and plans[-1].n_ctx == 1024
    assert "−" in panel.summary.text()  # the difference to the previous plan is shown
    panel.type_k.setCurrentText("q8_0")
    panel.type_v.setCurrentText("q8_0")
    panel.flash.setCurrentText("on")
    kv_q8 = plans[-1].bytes_for(None, "kv")
    with qtbot.waitSignal(window.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
        panel.apply.click()
    assert window.bridge.loaded_info.n_ctx == 1024
    assert same_at_log_precision(window.memory.measured.bytes_for(None, "kv"), kv_q8)
    saved = window.store.get_model_settings(model_key(window.bridge.loaded_info.path))["plan"]
    assert saved["n_ctx"] == 1024 and saved["type_k"] == "q8_0"


def test_measured_decode_cost_of_the_cache_type_is_hinted(window):
    panel = window.memory.cache
    cuda = panel.backend == "cuda"
    panel.backend = "cuda"  # the numbers were measured on an H100: shown on CUDA builds only
    try:
        panel.flash.setCurrentText("on")
        panel.type_k.setCurrentText("q8_0")
        panel.type_v.setCurrentText("q8_0")
        assert "0.80× f16" in panel.speed_hint.text() and "H100" in panel.speed_hint.text()
        panel.type_v.setCurrentText("f16")
        assert panel.speed_hint.text() == ""
        panel.backend = "cpu"
        panel.type_v.setCurrentText("q8_0")
        assert panel.speed_hint.text() == "" and panel.speed_hint.isHidden()
    finally:
        panel.backend = "cuda" if cuda else panel.backend


def test_fit_keeps_the_margins_kvdeck_fit_keeps_and_the_window_remembers_them(qtbot, window, tmp_path):
    """The slider's fitted maximum leaves the same room as ``kvdeck fit --cpu-margin-mib``: room for
    about 4096 tokens left in RAM gives a smaller fitted context, exactly what the engine's fit
    says; the margins are one setting, read by the next window's first load."""
    panel = window.memory.cache
    assert panel.margins() == Margins()  # llama.cpp's -fitt default, the CLI's default too
    cpu = next(d for d in panel.devices if d.kind == "cpu")
    s = panel.settings()
    need = analytic_plan(panel.info, s.replace(n_ctx=4096), panel.devices).bytes_for(cpu.name)
    margin_mib = (cpu.free_bytes - cpu.reserved_bytes - need) // MiB
    panel.cpu_margin.setValue(margin_mib)
    expected = fit(panel.info, s, panel.devices, plan_fn=analytic_plan, margins=Margins(cpu=margin_mib * MiB))
    assert panel.fitted_ctx == expected.plan.n_ctx and 256 <= panel.fitted_ctx < 8192
    assert f"fits up to <b>{panel.fitted_ctx:,}</b>" in panel.ctx_label.text()
    assert window.store.get_setting(MARGINS_SETTING) == {"gpu_mib": 1024, "cpu_mib": margin_mib}

    store = ChatStore(tmp_path / "second.sqlite3")  # RAM can never spare 1 TiB: nothing fits
    store.set_setting(MARGINS_SETTING, {"gpu_mib": 1024, "cpu_mib": 1 << 20})
    second = MainWindow(store)
    qtbot.addWidget(second)
    try:
        with qtbot.waitSignal(second.bridge.loaded, timeout=LOAD_TIMEOUT_MS):
            second.start()
        assert second.memory.cache.cpu_margin.value() == 1 << 20
        assert second.memory.cache.fitted_ctx == 0 and "does not fit" in second.memory.cache.ctx_label.text()
        assert second.bridge.loaded_info.n_ctx == 4096  # the first load's fit kept the margin too
    finally:
        second.close()
        store.close()


def test_experts_on_the_cpu_are_a_setting_of_moe_models_with_a_gpu(window, tmp_path):
    panel = window.memory.cache
    assert not panel.cpu_moe.isEnabled()  # SmolLM2 on the CPU: no experts, no GPU
    moe = inspect_gguf(str(write_family("qwen3moe", tmp_path)))
    devices = [Device("CPU", "cpu", 64 * GiB, 32 * GiB), Device("CUDA0", "gpu", 8 * GiB, 8 * GiB)]
    panel.set_model(moe, PlanSettings(n_cpu_moe=1), devices, "cuda")
    assert panel.cpu_moe.isEnabled() and panel.settings().n_cpu_moe == 1
    panel.cpu_moe.setValue(2)
    assert panel.settings().n_cpu_moe == 2
