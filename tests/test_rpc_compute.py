"""The compute buffers of a load split across CPU-backed RPC workers, against llama.cpp's dry run.

engine.plan.compute_rpc states a bound that must never fall short (a fit that trusts it must
not overfill a worker) and should stay close: on every worker and on the host, with one worker
(no pipeline parallelism) and two (four copies of every split input), flash attention on and
off, f16 and q8_0 K/V, full and partial offload, the prediction is at or above what llama.cpp's
no-alloc dry run reserves there and at most 7 MiB above it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.fit import pin_split
from engine.protocol import LoadParams
from engine.runtime.exact_plan import plan_from_log
from engine.runtime.info import plan_devices
from tests.helpers.gguf_factory import write_family
from tests.helpers.rpc_workers import needs_rpc, workers
from tests.helpers.runtime_host import running_host

SETTINGS = [
    PlanSettings(n_ctx=2048, type_k="f16", type_v="f16"),
    PlanSettings(n_ctx=4096, type_k="f16", type_v="f16", flash_attn="off"),
    PlanSettings(n_ctx=1024, n_ubatch=256, type_k="q8_0", type_v="q8_0", flash_attn="on"),
    PlanSettings(n_ctx=2048, type_k="f16", type_v="f16", n_gpu_layers=20),
]


@needs_rpc
@pytest.mark.parametrize("n_workers", [1, 2])
def test_the_compute_plan_never_falls_short_of_llama_cpp_on_any_worker(
    smollm2_path: Path, n_workers: int
) -> None:
    info = inspect_gguf(str(smollm2_path))
    rows = []
    with workers(n_workers) as ws:
        rpc = tuple(w.endpoint for w in ws)
        devices = plan_devices(rpc=rpc)[0]
        with running_host(rpc=rpc) as (host, _):
            for base in SETTINGS:
                settings = pin_split(base, devices)
                log = host.load(LoadParams(str(smollm2_path), settings, dry_run=True)).memory_log
                dry = plan_from_log(log, settings, "exact")
                predicted = analytic_plan(info, settings, devices)
                for dev in dry.devices():
                    p, d = predicted.bytes_for(dev, "compute"), dry.bytes_for(dev, "compute")
                    if d:
                        rows.append((base, dev, round(p / MiB, 2), round(d / MiB, 2)))
    assert len(rows) >= len(SETTINGS) * (n_workers + 1)
    for base, dev, p, d in rows:
        assert d - 0.01 <= p <= d + 7, (base, dev, p, d)


@needs_rpc
def test_the_bound_holds_for_other_families_on_two_workers(tmp_path: Path) -> None:
    """Sliding-window (two masks, a rotation pair per cache), routed experts, a recurrent
    model and a vocabulary so small that the last layer's phase outweighs the logits."""
    rows = []
    with workers(2) as ws:
        rpc = tuple(w.endpoint for w in ws)
        devices = plan_devices(rpc=rpc)[0]
        with running_host(rpc=rpc) as (host, _):
            for family in ("llama", "gemma3", "qwen3moe", "mamba"):
                path = write_family(family, tmp_path)
                info = inspect_gguf(str(path))
                for base in (*SETTINGS[:3], PlanSettings(n_ctx=2048, n_seq_max=2)):
                    settings = pin_split(base, devices)
                    log = host.load(LoadParams(str(path), settings, dry_run=True)).memory_log
                    dry = plan_from_log(log, settings, "exact")
                    predicted = analytic_plan(info, settings, devices)
                    rows += [
                        (
                            family,
                            base,
                            dev,
                            predicted.bytes_for(dev, "compute"),
                            dry.bytes_for(dev, "compute"),
                        )
                        for dev in dry.devices()
                    ]
    assert len(rows) == 4 * 4 * 3
    under = [(f, b, dev, p / MiB, d / MiB) for f, b, dev, p, d in rows if p < d - 0.01 * MiB]
    assert not under
