"""``kvdeck plan`` / ``kvdeck fit`` contracts, and fit's promise: its settings load."""

from __future__ import annotations

import json

import pytest

from engine import protocol as P
from engine.core.memory_types import Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import fit
from tests.helpers.cli import kvdeck
from tests.helpers.runtime_host import running_host

KEYS = ("weights", "kv", "recurrent", "compute", "output", "driver", "total")


def test_plan_json_contract(smollm2_path):
    r = kvdeck("plan", str(smollm2_path), "--ctx", "1000", "--parallel", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("model", "n_ctx", "n_seq", "flash_attn", "type_k", "type_v", "method", "devices", "totals"):
        assert key in data
    assert data["method"] == "analytic" and data["n_seq"] == 2
    assert data["n_ctx"] == 1024  # llama.cpp pads per sequence: 1000/2 -> 512 cells each
    assert data["devices"][0]["name"] == "CPU"
    assert set(KEYS) <= set(data["devices"][0]) and set(KEYS) <= set(data["totals"])
    # SmolLM2: 30 layers x 3 KV heads x 64 dims x 2 bytes (f16) x 2 (K and V) per cell
    assert data["totals"]["kv"] == 30 * 3 * 64 * 2 * 2 * 1024


@pytest.mark.slow
def test_exact_plan_agrees_with_analytic(smollm2_path):
    # (not 2048: ggml packs SmolLM2's compute buffer 4 % larger at exactly 2048 cells, an allocator quirk)
    a = json.loads(kvdeck("plan", str(smollm2_path), "--ctx", "3000", "--json").stdout)
    r = kvdeck("plan", str(smollm2_path), "--ctx", "3000", "--exact", "--json")
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)
    assert e["method"] == "exact" and e["flash_attn"] in (True, False)
    assert e["totals"]["kv"] == a["totals"]["kv"]
    assert abs(e["totals"]["compute"] - a["totals"]["compute"]) <= max(MiB, 0.01 * e["totals"]["compute"])


def test_invalid_settings_are_refused_in_words(smollm2_path):
    r = kvdeck("plan", str(smollm2_path), "--cache-type-v", "q4_0", "--flash-attn", "off")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "flash attention" in r.stderr.lower()
    assert len(r.stderr.strip().splitlines()) == 1


def test_fit_json_contract_and_budget(smollm2_path):
    r = kvdeck("fit", str(smollm2_path), "--budget-mib", "1350", "--margin-mib", "1024", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("fits", "n_ctx", "n_gpu_layers", "limited_by", "plan", "draft"):
        assert key in data
    assert data["fits"] and data["draft"] is None
    assert data["plan"]["totals"]["total"] <= 326 * MiB
    assert data["n_ctx"] < 8192 and "CPU" in data["limited_by"]


def test_fit_with_a_draft_gives_it_the_targets_context(smollm2_path, gemma3_path):
    r = kvdeck("fit", str(gemma3_path), "--draft", str(smollm2_path), "--budget-mib", "2500", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["draft"]["n_ctx"] == data["n_ctx"] < 32768
    # budgeted: what stays resident (with mmap the mapped span's pages of other tensors are shown
    # in "total", as llama.cpp prints the buffer, but are read once and not budgeted)
    both = data["plan"]["totals"]["resident"] + data["draft"]["plan"]["totals"]["resident"]
    assert both <= (2500 - 1024) * MiB


def test_impossible_budget_says_so(smollm2_path):
    r = kvdeck("fit", str(smollm2_path), "--budget-mib", "1100", "--json")
    data = json.loads(r.stdout)
    assert r.returncode == 2 and not data["fits"] and "does not fit" in data["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("budget_mib", [1300, 1500])
def test_fitted_settings_load(smollm2_path, budget_mib):
    info = inspect_gguf(smollm2_path)
    cpu = [Device("CPU", "cpu", 64 * GiB, 64 * GiB)]
    result = fit(info, PlanSettings(n_ctx=0), cpu, plan_fn=analytic_plan, budget_bytes=budget_mib * MiB)
    assert result.fits
    with running_host(P.LoadParams(str(smollm2_path), result.settings)) as (host, loaded):
        assert loaded.n_ctx == result.plan.n_ctx
        assert host.generate("Hi", max_tokens=2).tokens


def test_the_runtimes_own_gpu_reserve_comes_out_of_the_budget(smollm2_path):
    """A CUDA child holds ~523 MiB outside llama.cpp's buffers (H100): a budget is what the whole
    app may use, so fit leaves that free, whether the budget is the user's or the free memory."""
    info = inspect_gguf(smollm2_path)
    cpu = Device("CPU", "cpu", 64 * GiB, 64 * GiB)
    bare = Device("CUDA0", "gpu", 8 * GiB, 3 * GiB)
    held = Device("CUDA0", "gpu", 8 * GiB, 3 * GiB, reserved_bytes=524 * MiB)
    for budget in (None, 2 * GiB):
        a, b = (
            fit(
                info,
                PlanSettings(n_ctx=0),
                [cpu, gpu],
                plan_fn=analytic_plan,
                budget_bytes=budget,
                margin_bytes=1024 * MiB,
            )
            for gpu in (bare, held)
        )
        assert a.budgets["CUDA0"] - b.budgets["CUDA0"] == 524 * MiB
        assert b.fits and b.plan.bytes_for("CUDA0") <= b.budgets["CUDA0"]
