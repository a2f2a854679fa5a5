"""Specification of the host's weights in each load mode (engine.plan.weights), against real loads.

The runtime child loads with mmap (llama.cpp's default): the host's plain weights buffer is then
the model file's span of its tensors (``CPU_Mapped``), in which a Gemma 4 tied output (created
before ``token_embd``, so two tensors of one name) is one range of bytes, and which covers any
repacked matrices lying between. Without mmap (``load_mode="none"``, what the no-alloc dry run
always uses) each buffer holds its own tensors, and Gemma 4's host buffer holds the embeddings
twice. The window's "predicted (analytic)" bars and the measured ones come from these plans and
these log lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import protocol as P
from engine.core.errors import InvalidSettings
from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.measured import MemoryLogParser
from tests.helpers.gguf_factory import write_llama
from tests.helpers.llama_dry_run import dry_run
from tests.helpers.mtp_models import write_gemma4_target
from tests.helpers.runtime_host import running_host

S = PlanSettings(n_ctx=256)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mapped")
    return {
        "gemma4": write_gemma4_target(d / "g4.gguf"),  # tied output, F32 (nothing repacked)
        "llama-q4_0": write_llama(d / "q4.gguf", matrix_type="q4_0"),  # matrices to CPU_REPACK
    }


def _buffers(lines: list[str]) -> dict[str, float]:
    """llama.cpp's model buffers of a load, MiB by buffer type, as printed."""
    parser = MemoryLogParser()
    for line in lines:
        parser.feed(line)
    return {buft: mib for (comp, buft), mib in parser.buffers.items() if comp == "weights"}


def _host_weights(plan_settings: PlanSettings, path: Path) -> dict[str, str]:
    """The plan's host weights as the log would print them: plain buffer and CPU_REPACK."""
    plan = analytic_plan(inspect_gguf(path), plan_settings, [])
    rep = sum(
        a.bytes for a in plan.allocations if a.component == "weights" and a.detail.startswith("CPU_REPACK")
    )
    plain = plan.bytes_for("CPU", "weights") - rep
    return {"plain": f"{plain / MiB:.2f}", "CPU_REPACK": f"{rep / MiB:.2f}"}


@pytest.mark.parametrize("name", ["gemma4", "llama-q4_0"])
def test_the_runtime_loads_with_mmap_and_the_plan_says_what_it_maps(
    models: dict[str, Path], name: str
) -> None:
    """A window or CLI load (the runtime child, default settings): the CPU_Mapped buffer and
    CPU_REPACK are what the default plan predicts, to the log's 0.01 MiB."""
    with running_host(P.LoadParams(str(models[name]), S)) as (_host, loaded):
        assert loaded is not None
        logged = _buffers(loaded.memory_log)
    assert "CPU" not in logged  # nothing copied into a plain CPU buffer
    want = _host_weights(S, models[name])
    assert f"{logged['CPU_Mapped']:.2f}" == want["plain"], (logged, want)
    assert f"{logged.get('CPU_REPACK', 0.0):.2f}" == want["CPU_REPACK"]


def test_a_load_without_mmap_copies_and_the_plan_follows(models: dict[str, Path]) -> None:
    """``load_mode="none"`` reaches the child: the weights are copied into a CPU buffer, Gemma 4's
    tied output a second time, and the "none" plan says so; the dry run's loader agrees."""
    none = S.replace(load_mode="none")
    path = models["gemma4"]
    with running_host(P.LoadParams(str(path), none)) as (_host, loaded):
        assert loaded is not None
        logged = _buffers(loaded.memory_log)
    assert set(logged) == {"CPU"}
    assert f"{logged['CPU']:.2f}" == _host_weights(none, path)["plain"]
    (run,) = dry_run([(str(path), none)], real=True)
    assert f"{_buffers(run.lines)['CPU']:.2f}" == f"{logged['CPU']:.2f}"
    info = inspect_gguf(path)
    assert info.weights is not None and info.weights.tied_output
    copied = analytic_plan(info, none, []).bytes_for("CPU", "weights")
    mapped = analytic_plan(info, S, []).bytes_for("CPU", "weights")
    assert copied - mapped == info.weights.token_embd_host  # the second copy, and only it


def test_an_unknown_load_mode_is_one_sentence(models: dict[str, Path]) -> None:
    bad = P.LoadParams.from_dict({"path": str(models["gemma4"]), "settings": {"load_mode": "direct"}})
    with (
        running_host() as (host, _loaded),
        pytest.raises(InvalidSettings, match="load mode must be mmap or none"),
    ):
        host.load(bad)
