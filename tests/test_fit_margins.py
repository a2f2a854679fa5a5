"""Specification: fit budgets per device kind (issue 18 part 4).

A margin meant for a GPU must never come off host RAM: with one margin for every device, a
4 GiB GPU margin on a machine with 3 GiB of free RAM left the CPU nothing and fit answered 256
tokens. Synthetic devices, a synthetic llama, the analytic plan (no GPU needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.errors import KvDeckError
from engine.core.memory_types import Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import budgets_for, default_settings, fit, preflight
from engine.plan.margins import DEFAULT_CPU_MARGIN, DEFAULT_GPU_MARGIN, Margins
from tests.helpers.gguf_factory import write_llama

CPU = Device("CPU", "cpu", 8 * GiB, 3 * GiB)
GPU0 = Device("CUDA0", "gpu", 24 * GiB, 20 * GiB)
GPU1 = Device("CUDA1", "gpu", 24 * GiB, 20 * GiB)


def test_a_huge_gpu_margin_leaves_the_cpu_budget_alone() -> None:
    margins = Margins.from_options("16384", None)
    budgets = budgets_for([CPU, GPU0], margins=margins)
    assert budgets["CUDA0"] == 4 * GiB
    assert budgets["CPU"] == 3 * GiB - DEFAULT_CPU_MARGIN


def test_cpu_margin_and_per_device_margins() -> None:
    margins = Margins.from_options("1536,CUDA1=512", 256)
    budgets = budgets_for([CPU, GPU0, GPU1], margins=margins)
    assert budgets == {
        "CPU": 3 * GiB - 256 * MiB,
        "CUDA0": 20 * GiB - 1536 * MiB,
        "CUDA1": 20 * GiB - 512 * MiB,
    }
    only_named = Margins.from_options("CUDA0=2048,CUDA1=1024", None)
    assert [only_named.for_device(d) for d in (CPU, GPU0, GPU1)] == [
        DEFAULT_CPU_MARGIN,
        2048 * MiB,
        1024 * MiB,
    ]
    assert Margins.from_options(None, None) == Margins(DEFAULT_GPU_MARGIN, DEFAULT_CPU_MARGIN)
    for bad in ("lots", "CUDA0=-1", "CUDA0="):
        with pytest.raises(KvDeckError, match="--margin-mib"):
            Margins.from_options(bad, None)


def test_fit_with_a_huge_gpu_margin_still_uses_the_host(tmp_path: Path) -> None:
    """CPU-only layers (ngl 0) must fit in host RAM however large the GPU margin is."""
    info = inspect_gguf(write_llama(tmp_path / "m.gguf"))
    settings = PlanSettings(n_gpu_layers=0, n_ctx=0)
    margins = Margins.from_options("16384", None)  # more than the host has free
    result = fit(info, settings, [CPU, GPU0], plan_fn=analytic_plan, margins=margins)
    assert result.fits and result.plan.n_ctx >= min(4096, info.n_ctx_train)
    legacy = fit(info, settings, [CPU, GPU0], plan_fn=analytic_plan, margin_bytes=16384 * MiB)
    assert not legacy.fits  # the old single margin: nothing left for the host
    chosen, _r = default_settings(info, [CPU, GPU0], plan_fn=analytic_plan, margins=margins)
    assert chosen.n_ctx >= 256
    plan = preflight(
        info,
        PlanSettings(n_ctx=512, n_gpu_layers=0),
        [CPU, GPU0],
        "cuda",
        plan_fn=analytic_plan,
        margins=margins,
    )
    assert plan.bytes_for("CPU") > 0
