"""The window's context fit leaves room for the drafter the draft picker has chosen (issue 19): the
fitted maximum with the model's own MTP heads or a Gemma 4 assistant equals what ``kvdeck fit
--mtp`` / ``--draft ASSISTANT`` fits (engine.plan.fit with the drafter), and is lower than the
target's alone on a machine where memory, not the training context, is the limit.
"""

from __future__ import annotations

from app.memory.cache_panel import CachePanel
from engine.core.memory_types import Device, PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.drafting import mtp_settings
from engine.plan.fit import DraftSpec, fit
from engine.plan.margins import Margins
from tests.helpers import mtp_models as mm

NO_MARGINS = Margins(gpu=0, cpu=0)


def _tight_cpu(info: GGUFInfo, n_ctx: int) -> list[Device]:
    """Host RAM that holds the target alone at ``n_ctx`` tokens and nothing more."""
    roomy = [Device("CPU", "cpu", 1 << 40, 1 << 40)]
    need = analytic_plan(info, PlanSettings(n_ctx=n_ctx), roomy).bytes_for("CPU")
    return [Device("CPU", "cpu", need, need)]


def _panel(qtbot, info: GGUFInfo, devices: list[Device]) -> CachePanel:
    panel = CachePanel()
    qtbot.addWidget(panel)
    panel.set_margins(NO_MARGINS)
    panel.set_model(info, PlanSettings(n_ctx=1024), devices, "cpu")
    return panel


def test_the_fitted_context_leaves_room_for_the_models_own_mtp_heads(qtbot, tmp_path):
    info = inspect_gguf(str(mm.write_hyv3(tmp_path / "hyv3.gguf")))
    devices = _tight_cpu(info, 2048)
    panel = _panel(qtbot, info, devices)
    alone = panel.fitted_ctx
    assert alone == 2048

    panel.set_drafter("mtp")
    s = panel.settings()
    with_heads = fit(
        info,
        mtp_settings(info.hybrid, s),
        devices,
        plan_fn=analytic_plan,
        margins=NO_MARGINS,
        draft=DraftSpec(info, s, "mtp"),
    )
    assert with_heads.fits and panel.fitted_ctx == with_heads.plan.n_ctx < alone

    panel.set_drafter("")  # no drafter: the target alone again
    assert panel.fitted_ctx == alone


def test_the_fitted_context_leaves_room_for_a_gemma4_assistant(qtbot, tmp_path):
    info = inspect_gguf(str(mm.write_gemma4_target(tmp_path / "g4.gguf")))
    assistant = str(mm.write_gemma4_assistant(tmp_path / "g4a.gguf"))
    devices = _tight_cpu(info, 4096)
    panel = _panel(qtbot, info, devices)
    alone = panel.fitted_ctx
    assert alone == 4096

    panel.set_drafter("model", assistant)
    s = panel.settings()
    paired = fit(
        info,
        s,
        devices,
        plan_fn=analytic_plan,
        margins=NO_MARGINS,
        draft=DraftSpec(inspect_gguf(assistant), s, "assistant"),
    )
    assert paired.fits and panel.fitted_ctx == paired.plan.n_ctx < alone


def test_a_drafter_that_cannot_draft_for_the_model_leaves_the_fit_alone(qtbot, tmp_path):
    info = inspect_gguf(str(mm.write_hyv3(tmp_path / "plain.gguf", n_nextn=0)))
    panel = _panel(qtbot, info, _tight_cpu(info, 2048))
    alone = panel.fitted_ctx
    panel.set_drafter("mtp")  # no nextn layers: the picker never offers it; the fit ignores it
    assert panel.fitted_ctx == alone
    panel.set_drafter("model", str(mm.write_gemma4_assistant(tmp_path / "g4a.gguf")))  # another target's
    assert panel.fitted_ctx == alone
