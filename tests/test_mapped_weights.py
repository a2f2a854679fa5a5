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

import json
from pathlib import Path

import pytest

from engine import protocol as P
from engine.core.errors import InvalidSettings
from engine.core.memory_types import Device, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.gguf.reader import read_header
from engine.plan.analytic import analytic_plan
from engine.plan.fit import preflight
from engine.plan.measured import MemoryLogParser
from tests.helpers import gguf_raw
from tests.helpers.cli import kvdeck
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


def test_kvdeck_plan_takes_the_load_mode(models: dict[str, Path]) -> None:
    """``kvdeck plan`` plans the default load (mmap) unless told ``--load-mode none``."""
    path = str(models["gemma4"])
    for extra, mode in (((), "mmap"), (("--load-mode", "none"), "none")):
        r = kvdeck("plan", path, "--ctx", "256", "--json", *extra)
        assert r.returncode == 0, r.stderr
        (cpu,) = [d for d in json.loads(r.stdout)["devices"] if d["name"] == "CPU"]
        want = analytic_plan(inspect_gguf(path), S.replace(load_mode=mode), []).bytes_for("CPU", "weights")
        assert cpu["weights"] == want, mode


@pytest.mark.parametrize("name", ["gemma4", "llama-q4_0"])
def test_the_windows_predicted_weights_are_the_measured_ones(
    qtbot, tmp_path, monkeypatch, models, name
) -> None:
    """The Memory dock sets the analytic plan against the load's log: the same weights, to the
    log's 0.01 MiB (while the plan counted a load that copies the weights in, Gemma 4's read
    0.77 against 0.69 MiB, +11.7 %, and the repacking llama's 0.26 against 0.41 MiB, −37 %)."""
    from tests.helpers.gui import loaded_window

    with loaded_window(qtbot, tmp_path, monkeypatch, models[name]) as win:
        predicted, measured = win.memory.dashboard.compared
        assert predicted is not None and measured is not None
        for plan in (predicted, measured):
            assert plan.settings.load_mode == "mmap"
        p, m = predicted.bytes_for("CPU", "weights"), measured.bytes_for("CPU", "weights")
        assert abs(p - m) <= MiB // 100, (p / MiB, m / MiB)  # two buffers, each printed ±0.005


def test_a_lazily_read_table_is_mapped_on_its_own(tmp_path: Path) -> None:
    """A Gemma 4 per-layer embedding table over 4 GiB is read lazily (TENSOR_READ_LAZY,
    llama_model_loader::lazy_read): llama.cpp maps it as a buffer of its own, beside the span of
    the other host tensors, which still covers its bytes where it lies between them."""
    spec = gguf_raw.base("gemma4")
    ple = gguf_raw.Tensor(b"per_layer_token_embd.weight", [1 << 20, 1025], 0)  # F32: 4 GiB + 4 MiB
    spec.tensors.insert(1, ple)  # right after token_embd: between the host's tensors
    path = tmp_path / "lazy.gguf"
    with open(path, "wb") as fh:  # a sparse file: the table's zeros are a hole
        fh.write(spec.to_bytes())
        fh.truncate(spec.marks["size"])
    rows = read_header(str(path), path.stat().st_size)[2]
    span = max(off + n for _name, _t, _e, n, off, _ne0 in rows)  # the first tensor is at 0
    plan = analytic_plan(inspect_gguf(path), S, [])
    resident, between = [a for a in plan.allocations if a.component == "weights"]
    assert plan.bytes_for("CPU", "weights") == span + ple.nbytes() and "lazily read" in resident.detail
    assert between.evictable and between.bytes >= ple.nbytes()  # the span's pages of the table too
    copied = analytic_plan(inspect_gguf(path), S.replace(load_mode="none"), [])
    assert copied.bytes_for("CPU", "weights") < plan.bytes_for("CPU", "weights")  # each tensor once


def test_mapped_pages_of_other_tensors_are_shown_but_not_budgeted(models: dict[str, Path]) -> None:
    """The span also maps the repacked matrices lying between the host's tensors: llama.cpp's
    CPU_Mapped figure counts them, so the plan shows them, but they are read once and then clean
    page cache, so preflight and fit budget only what must stay resident (the no-mmap host
    figure, as llama-fit-params sizes it)."""
    path = models["llama-q4_0"]
    plan = analytic_plan(inspect_gguf(path), S, [])
    evictable = [a for a in plan.allocations if a.evictable]
    assert evictable and all(a.device == "CPU" and a.component == "weights" for a in evictable)
    between = sum(a.bytes for a in evictable)
    assert plan.resident_bytes_for("CPU") == plan.bytes_for("CPU") - between
    assert not [
        a
        for a in analytic_plan(inspect_gguf(path), S.replace(load_mode="none"), []).allocations
        if a.evictable
    ]
    # RAM for what stays resident, but not for the whole span: the load is still allowed.
    free = plan.resident_bytes_for("CPU") + between // 2
    ram = [Device("CPU", "cpu", free, free)]
    got = preflight(inspect_gguf(path), S, ram, "cpu", plan_fn=analytic_plan, margin_bytes=0)
    assert got.bytes_for("CPU") > free
