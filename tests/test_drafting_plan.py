"""The memory of self-drafting (issue 19): the MTP heads' context and a Gemma 4 assistant's, planned
per component and checked against llama.cpp's own no-alloc dry run of the same two contexts; fit
puts target + drafter in one budget; bad drafters are one line.

Sizes in the dry-run log are printed to 0.01 MiB, so "exact" here means within that rounding.
"""

from __future__ import annotations

import json

import pytest

from engine.core.memory_types import COMPONENTS, Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.drafting import creation_output, drafting_plan, with_drafter
from engine.runtime.exact_plan import exact_plans
from engine.runtime.info import plan_devices
from tests.helpers import mtp_models as mm
from tests.helpers.cli import kvdeck
from tests.helpers.llama_dry_run import dry_run

LOG_ROUNDING = MiB // 100 + 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return mm.write_set(tmp_path_factory.mktemp("mtp-plan"))


CASES = [
    ("hyv3", None, PlanSettings(n_ctx=4096, n_batch=512, n_ubatch=512, mtp=True)),
    (
        "hyv3",
        None,
        PlanSettings(n_ctx=2048, n_batch=256, n_ubatch=256, mtp=True, flash_attn="off", n_seq_max=2),
    ),
    ("qwen35", None, PlanSettings(n_ctx=4096, n_batch=512, n_ubatch=512, mtp=True, n_rs_seq=9)),
    ("g4", "g4a", PlanSettings(n_ctx=4096, n_batch=512, n_ubatch=512)),
    ("g4", "g4a", PlanSettings(n_ctx=2048, n_batch=256, n_ubatch=256, flash_attn="off", n_seq_max=2)),
]


@pytest.mark.parametrize(("target", "assistant", "settings"), CASES)
def test_drafting_plan_matches_the_dry_run_per_component(models, target, assistant, settings):
    """Target and drafter each against their own part of one dry run: weights (the MTP blocks
    with load_mtp, or the assistant's file), KV (the nextn layers only; none for the assistant,
    whose layers are views), output at creation exact; compute an estimate within 2 % (over
    rather than under)."""
    devices, _ = plan_devices()
    info = inspect_gguf(models[target])
    a_info = inspect_gguf(models[assistant]) if assistant else None
    t_exact, d_exact = exact_plans(info, settings, devices, a_info)
    t_plan = analytic_plan(info, settings, devices)
    d_plan = drafting_plan(info, t_plan, devices, a_info)
    assert d_exact is not None and d_plan.n_ctx == t_plan.n_ctx == t_exact.n_ctx == d_exact.n_ctx
    for c in ("weights", "kv", "recurrent"):
        assert abs(t_plan.bytes_for(None, c) - t_exact.bytes_for(None, c)) <= LOG_ROUNDING, c
        assert abs(d_plan.bytes_for(None, c) - d_exact.bytes_for(None, c)) <= LOG_ROUNDING, c
    assert abs(creation_output(d_plan) - d_exact.bytes_for(None, "output")) <= LOG_ROUNDING
    if assistant:
        assert d_plan.bytes_for(None, "kv") == d_exact.bytes_for(None, "kv") == 0
        assert any("views of the target" in n for n in d_exact.notes)
    else:
        assert d_plan.bytes_for(None, "kv") > 0
        # the MTP blocks' own bytes when copied in; with mmap, what they add to the mapped span
        # (nothing here: the file holds them between the trunk and the output tensors)
        copied = analytic_plan(info, settings.replace(load_mode="none"), devices)
        assert drafting_plan(info, copied, devices).bytes_for(None, "weights") > 0
    dc, ec = d_plan.bytes_for(None, "compute"), d_exact.bytes_for(None, "compute")
    assert -LOG_ROUNDING <= dc - ec <= max(ec // 50, LOG_ROUNDING)


def test_mtp_weights_load_only_with_load_mtp(models):
    """A real load, both load modes (without mmap the buffer is the tensors' sum, with mmap the
    file's span): the target's weights leave the nextn blocks out (llama.cpp skips them), and
    with ``mtp`` the load holds target + drafter."""
    devices, _ = plan_devices()
    info = inspect_gguf(models["hyv3"])
    s = PlanSettings(n_ctx=512, n_batch=64, n_ubatch=64)
    jobs = [(info.path, s.replace(mtp=mtp, load_mode=m)) for mtp in (False, True) for m in ("none", "mmap")]
    for (_p, s), run in zip(jobs, dry_run(jobs, real=True)):
        target = analytic_plan(info, s, devices)
        want = target.bytes_for(None, "weights")
        if s.mtp:
            want += drafting_plan(info, target, devices).bytes_for(None, "weights")
        assert abs(run.plan.bytes_for(None, "weights") - want) <= LOG_ROUNDING, (s.mtp, s.load_mode)


def _fit(path: str, *extra: str) -> dict:
    r = kvdeck("fit", path, "--budget-mib", "8", "--cpu-margin-mib", "0", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_fit_puts_target_and_drafter_in_one_budget(models):
    """With the MTP context (or the assistant) in the same 8 MiB, fit picks a smaller context,
    and target + drafter at that context stay within the budget."""
    for path, extra in ((models["hyv3"], ("--mtp",)), (models["g4"], ("--draft", models["g4a"]))):
        alone, both = _fit(path), _fit(path, *extra)
        assert both["draft"]["kind"] == ("mtp" if extra == ("--mtp",) else "assistant")
        assert both["n_ctx"] < alone["n_ctx"] and both["draft"]["n_ctx"] == both["n_ctx"]
        total = both["plan"]["totals"]["total"] + both["draft"]["plan"]["totals"]["total"]
        assert total <= 8 * MiB


def test_plan_shows_the_drafter_and_the_sum_per_device(models):
    r = kvdeck("plan", models["hyv3"], "--mtp", "--ctx", "2048", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["drafter"]["kind"] == "mtp" and data["drafter"]["n_ctx"] == data["n_ctx"]
    cpu = next(row for row in data["combined"] if row["name"] == "CPU")
    assert cpu["total"] == data["totals"]["total"] + data["drafter"]["totals"]["total"]
    assert {c for c in COMPONENTS} <= set(cpu)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("plan", "{plain}", "--mtp"), "has no MTP (nextn) layers"),
        (("fit", "{hyv3}", "--draft", "{g4a}"), "cannot draft for"),
        (("plan", "{g4}", "--draft", "{g4a_heads}"), "head sizes"),
        (("plan", "{g4}", "--mtp", "--draft", "{g4a}"), "choose one"),
    ],
)
def test_a_drafter_that_cannot_be_is_one_line(models, args, words):
    r = kvdeck(*[a.format(**models) for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr


def test_preflight_sees_target_and_drafter_together(models):
    """``with_drafter`` plans hold both contexts, so ``kvdeck chat --mtp`` / ``--draft ASSISTANT``
    refuse a pair that does not fit together before anything loads; no heads: the target alone."""
    devices, _ = plan_devices()
    s = PlanSettings(n_ctx=2048, n_batch=256, n_ubatch=256)
    for target, assistant in (("hyv3", None), ("g4", "g4a")):
        info = inspect_gguf(models[target])
        a_info = inspect_gguf(models[assistant]) if assistant else None
        alone = analytic_plan(info, s, devices)
        both = with_drafter(analytic_plan, a_info)(info, s, devices)
        assert both.bytes_for() == alone.bytes_for() + drafting_plan(info, alone, devices, a_info).bytes_for()
    plain = inspect_gguf(models["plain"])
    assert with_drafter(analytic_plan)(plain, s, devices) == analytic_plan(plain, s, devices)


def test_with_a_gpu_the_drafter_follows_the_layer_placement(models):
    """Full offload: the MTP blocks' weights and KV on the GPU, like their layers; with the first
    layers only, the blocks (the last layers) stay on the host. The assistant's own weights go
    where its layers go and it still has no KV."""
    devices = [Device("CUDA0", "gpu", 80 * GiB, 80 * GiB), Device("CPU", "cpu", 64 * GiB, 64 * GiB)]
    info = inspect_gguf(models["hyv3"])
    full = drafting_plan(info, analytic_plan(info, PlanSettings(n_ctx=4096, mtp=True), devices), devices)
    assert full.bytes_for("CPU", "weights") == 0 and full.bytes_for("CUDA0", "kv") > 0
    part = PlanSettings(n_ctx=4096, mtp=True, n_gpu_layers=1)  # only the output layer on the GPU
    host = drafting_plan(info, analytic_plan(info, part, devices), devices)
    assert host.bytes_for("CUDA0", "weights") == host.bytes_for("CUDA0", "kv") == 0
    g4, g4a = inspect_gguf(models["g4"]), inspect_gguf(models["g4a"])
    s = PlanSettings(n_ctx=4096)
    a = drafting_plan(g4, analytic_plan(g4, s, devices), devices, g4a)
    assert a.bytes_for("CUDA0", "weights") > 0 and a.bytes_for(None, "kv") == 0
