"""Routed experts kept in host memory (``--n-cpu-moe N``), against llama.cpp's load.

Two loopback RPC workers stand in for GPUs (remote devices are real devices to llama.cpp). For a
qwen3moe with none, some and all of its layers' experts on the CPU, with f16 experts (plain CPU
buffer) and q4_0 experts (which llama.cpp repacks into CPU_REPACK when no local GPU offers a
host buffer), the analytic plan's weights and KV on every worker and the host's CPU_REPACK buffer
equal what llama.cpp allocates, to the 0.01 MiB its log prints (a dry run prints no weights, and
with mmap the host's plain weights are the mapped file's span, which covers at least the
planned tensors); the compute stays a bound that is never under on any device.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.core.memory_types import Device, GiB, MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.cpu_moe import override_patterns
from engine.plan.cpu_repack import cpu_only_repack
from engine.plan.fit import fit, pin_split
from engine.protocol import LoadParams
from engine.runtime.exact_plan import plan_from_log
from engine.runtime.info import plan_devices
from tests.helpers.cli import kvdeck
from tests.helpers.gguf_factory import write_family, write_wide_moe
from tests.helpers.rpc_workers import needs_rpc, workers
from tests.helpers.runtime_host import running_host

#: (n_cpu_moe, n_gpu_layers): none, some, all, more than the model has; then layer 0 on the host
#: (its experts there already), then every layer: beside remote devices only llama.cpp repacks
#: whole host layers as well. (Everything on the host, ngl 0, is left out: the CPU compute
#: buffer of such a load with q4_0 weights is above the plan's calibration, 2.76 vs 1.52 MiB.)
CASES = ((0, -1), (1, -1), (2, -1), (9, -1), (1, 2), (2, 2), (2, 1))


def test_n_cpu_moe_adds_llama_cpps_patterns_for_the_first_n_layers() -> None:
    assert override_patterns(0) == []
    assert override_patterns(2) == [
        r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps",
        r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps",
    ]


@needs_rpc
@pytest.mark.parametrize("matrix_type", ["f16", "q4_0"])
def test_experts_on_the_cpu_are_planned_as_llama_cpp_places_them(tmp_path: Path, matrix_type: str) -> None:
    path = write_family("qwen3moe", tmp_path, matrix_type=matrix_type)  # 2 layers
    info = inspect_gguf(str(path))
    rows = []
    with workers(2) as ws:
        rpc = tuple(w.endpoint for w in ws)
        devices = plan_devices(rpc=rpc)[0]
        with running_host(rpc=rpc) as (host, _):
            for n_cpu_moe, ngl in CASES:
                settings = pin_split(PlanSettings(n_ctx=1024, n_cpu_moe=n_cpu_moe, n_gpu_layers=ngl), devices)
                log = host.load(LoadParams(str(path), settings)).memory_log
                measured = plan_from_log(log, settings, "measured")
                predicted = analytic_plan(info, settings, devices)
                rows += [
                    (n_cpu_moe, ngl, dev, c, predicted.bytes_for(dev, c), measured.bytes_for(dev, c))
                    for dev in {*measured.devices(), *predicted.devices()}
                    for c in ("weights", "kv", "compute")
                ]
                repack = [a.bytes for a in predicted.allocations if a.detail.startswith("CPU_REPACK")]
                rows.append((n_cpu_moe, ngl, "CPU", "CPU_REPACK", sum(repack), _repack_bytes(log)))
                moved = any(n.startswith("experts of") for n in predicted.notes)
                on_host = 0 if ngl < 0 else min(2, 3 - ngl)  # leading layers on the host (2 + output)
                assert moved == (n_cpu_moe > on_host), (n_cpu_moe, ngl)
    exact = [r for r in rows if r[3] != "compute"]  # the host's too: the mapped span with mmap
    wrong = [r for r in exact if abs(r[4] - r[5]) > 0.01 * MiB]
    assert not wrong, [(n, ngl, dev, c, p / MiB, d / MiB) for n, ngl, dev, c, p, d in wrong]
    under = [r for r in rows if r[3] == "compute" and r[4] < r[5] - 0.01 * MiB]
    assert not under, [(n, ngl, dev, p / MiB, d / MiB) for n, ngl, dev, _c, p, d in under]
    if matrix_type == "q4_0" and cpu_only_repack(info)[0] is not None:
        assert any(r[3] == "CPU_REPACK" and r[5] for r in rows)


def _repack_bytes(log: list[str]) -> int:
    """The CPU_REPACK model buffer llama.cpp's load log prints, in bytes (0 when none)."""
    found = [re.search(r"CPU_REPACK model buffer size = +([\d.]+) MiB", line) for line in log]
    return sum(round(float(m.group(1)) * MiB) for m in found if m)


@needs_rpc
def test_plan_and_fit_take_n_cpu_moe_and_say_what_moved(tmp_path: Path) -> None:
    path = str(write_family("qwen3moe", tmp_path))
    with workers(1) as ws:
        for command in ("plan", "fit"):
            out = kvdeck(command, path, "--rpc", ws[0].endpoint, "--n-cpu-moe", "2", "--json")
            assert out.returncode == 0, out.stderr
            data = json.loads(out.stdout)
            plan = data if command == "plan" else data["plan"]
            assert plan["n_cpu_moe"] == 2
            assert any(n.startswith("experts of layers 0–1 on the CPU") for n in plan["notes"]), plan["notes"]


def test_a_negative_n_cpu_moe_is_refused_in_one_line(tmp_path: Path) -> None:
    path = str(write_family("qwen3moe", tmp_path))
    for command in (["plan"], ["fit"], ["chat", "--prompt", "Hi"], ["bench"], ["serve"]):
        out = kvdeck(*command[:1], path, *command[1:], "--n-cpu-moe", "-1")
        assert out.returncode != 0
        assert out.stderr.strip().splitlines() == ["error: --n-cpu-moe must be 0 or more, not -1"], (
            command,
            out.stderr,
        )


def test_fit_moves_experts_to_the_cpu_before_it_drops_layers(tmp_path: Path) -> None:
    """As llama-fit-params does: every layer stays on the GPU, with the experts of the fewest
    leading layers in host memory that let the context fit; only when all experts on the CPU
    are not enough does the fit drop whole layers."""
    info = inspect_gguf(str(write_wide_moe(tmp_path / "moe.gguf", n_layer=8)))
    cpu = Device("CPU", "cpu", 64 * GiB, 32 * GiB)

    def on_gpu(n_cpu_moe: int) -> int:
        plan = analytic_plan(info, PlanSettings(n_ctx=4096, n_cpu_moe=n_cpu_moe), [cpu, gpu])
        return plan.bytes_for("CUDA0")

    gpu = Device("CUDA0", "gpu", 8 * GiB, 8 * GiB)
    usable = (on_gpu(3) + on_gpu(4)) // 2  # between keeping 3 and 4 layers' experts off the GPU
    gpu = Device("CUDA0", "gpu", 8 * GiB, usable)
    result = fit(info, PlanSettings(), [cpu, gpu], plan_fn=analytic_plan, margin_bytes=0, max_context=4096)
    assert result.fits
    assert (result.settings.n_gpu_layers, result.settings.n_cpu_moe) == (9, 4)
    assert "experts of layers 0–3 on the CPU" in result.reason
    assert result.plan.bytes_for("CUDA0") <= usable
    # the experts' copies into the GPU compute buffer are replayed as llama.cpp schedules them
    assert any(n.startswith("compute: with layers (or routed experts) on the CPU") for n in result.plan.notes)

    gpu = Device("CUDA0", "gpu", 8 * GiB, on_gpu(8) - 4 * MiB)  # all experts off is not enough
    result = fit(info, PlanSettings(), [cpu, gpu], plan_fn=analytic_plan, margin_bytes=0, max_context=4096)
    assert result.fits and result.settings.n_cpu_moe == 8 and result.settings.n_gpu_layers < 9
