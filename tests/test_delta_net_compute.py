"""Specification: the CPU compute buffer of gated delta-net hybrids is never under llama.cpp's.

The corpus families (qwen3next, qwen35moe) have one width ratio; real models have conv widths of
several n_embd and more value heads than key heads. Against llama.cpp's dry run, for widths
the recurrent phase was not fitted on, the plan may be over (a stated bound, named in the
notes) but never under.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.memory_types import MiB
from engine.core.memory_types import PlanSettings as S
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from tests.helpers.delta_net import write_delta_net
from tests.helpers.llama_dry_run import dry_run

# (n_embd, d_state, n_group, dt_rank): value heads > key heads, wide keys, Qwen3-Next-like ratios
SHAPES = [(128, 32, 2, 16), (128, 64, 4, 8), (256, 32, 8, 16), (256, 64, 4, 16)]
SETTINGS = [S(n_ctx=4096, flash_attn="on", n_ubatch=1024), S(n_ctx=1000, n_seq_max=3, flash_attn="on")]


@pytest.mark.parametrize("arch", ["qwen3next", "qwen35moe"])
def test_delta_net_compute_is_never_under(tmp_path: Path, arch: str) -> None:
    paths = [write_delta_net(tmp_path / f"{i}.gguf", arch, *shape) for i, shape in enumerate(SHAPES)]
    runs = iter(dry_run([(str(p), s) for p in paths for s in SETTINGS], timeout=300))
    for path in paths:
        info = inspect_gguf(path)
        for settings in SETTINGS:
            run = next(runs)
            assert run.ok, run.error
            real = sum(v for (c, _b), v in run.parser.buffers.items() if c == "compute")
            plan = analytic_plan(info, settings, [])
            est = plan.bytes_for(component="compute") / MiB
            assert real - 0.01 <= est <= 1.7 * real, (path.name, settings, est, real)
            assert any("gated delta-net" in n and "bound" in n for n in plan.notes)
