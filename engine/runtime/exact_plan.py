"""The exact plan: ask llama.cpp itself, in a throwaway child process, without allocating.

A no_alloc dry run builds the real context (so flash-attention "auto" is resolved and the
compute buffers are sized by ggml's own allocator) but gives weights and KV dummy buffers. It
runs in its own short-lived process: hostile metadata can abort llama.cpp, and the loaded model
of the chat must never pay for that. Weights are printed as 0.00 in a dry run, so they come from
the analytic placement, which is exact for tensor bytes. What the CUDA driver takes beyond the
buffers (engine.plan.cuda_driver) is in no log, so it is computed from the dry run's buffers.
"""

from __future__ import annotations

import dataclasses

from engine import protocol as P
from engine.core.memory_types import Allocation, Device, MemoryPlan, MiB, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.analytic import analytic_plan, cuda_driver_of
from engine.plan.measured import MemoryLogParser
from engine.runtime.host import RuntimeHost


def plan_from_log(lines: list[str], settings: PlanSettings, source: str) -> MemoryPlan:
    parser = MemoryLogParser()
    for line in lines:
        parser.feed(line)
    return parser.result(settings, source)


def _kv_by_layer_devices(dry: tuple[Allocation, ...], analytic: MemoryPlan) -> tuple[Allocation, ...]:
    """A dry run reports each cache's total but 0.00 per-device buffers; when its total agrees
    with the analytic one (to the log's 0.01 MiB), place it on devices by the analytic layer
    placement, which is exact for which layer lives where."""
    out = list(dry)
    for comp in ("kv", "recurrent"):
        d_total = sum(a.bytes for a in dry if a.component == comp)
        a_allocs = [a for a in analytic.allocations if a.component == comp]
        if (
            len({a.device for a in a_allocs}) < 2
            or abs(d_total - sum(a.bytes for a in a_allocs)) > MiB // 100
        ):
            continue
        detail = next((a.detail for a in dry if a.component == comp), "")
        out = [a for a in out if a.component != comp]
        out += [Allocation(comp, a.device, a.bytes, detail) for a in a_allocs]
    return tuple(out)


def exact_plan(
    info: GGUFInfo, settings: PlanSettings, devices: list[Device], timeout: float = 300
) -> MemoryPlan:
    """Sizes from llama.cpp's own dry run, weights from the analytic placement; workers'
    devices (``Device.endpoint``) take part in the dry run as they would in the load."""
    return exact_plans(info, settings, devices, timeout=timeout)[0]


def exact_plans(
    info: GGUFInfo,
    settings: PlanSettings,
    devices: list[Device],
    assistant: GGUFInfo | None = None,
    timeout: float = 300,
) -> tuple[MemoryPlan, MemoryPlan | None]:
    """The target's exact plan and its drafting context's (the model's own MTP heads with
    ``settings.mtp``, or ``assistant``), each from its own part of one dry run's log."""
    rpc = tuple(dict.fromkeys(d.endpoint for d in devices if d.endpoint))
    with RuntimeHost(rpc=rpc) as host:  # workers' devices take part in the dry run as in the load
        params = P.LoadParams(info.path, settings, dry_run=True, draft=assistant.path if assistant else "")
        loaded = host.load(params, timeout=timeout)
    n = loaded.n_log_target or len(loaded.memory_log)
    lines = loaded.memory_log
    analytic = analytic_plan(info, settings, devices)
    target = _with_weights(plan_from_log(lines[:n], settings, "exact"), analytic)
    target = _with_driver(target, cuda_driver_of(info, settings, devices, _buffers(target, analytic)))
    if n >= len(lines):
        return target, None
    from engine.plan.drafting import drafting_plan

    analytic_draft = drafting_plan(info, target, devices, assistant, settings.n_gpu_layers)
    draft = _with_weights(plan_from_log(lines[n:], analytic_draft.settings, "exact"), analytic_draft)
    # the drafting context's driver term is the analytic one (rounded over its analytic compute)
    return target, _with_driver(draft, [a for a in analytic_draft.allocations if a.component == "driver"])


def _buffers(exact: MemoryPlan, analytic: MemoryPlan) -> list[Allocation]:
    """The exact plan's allocations one per llama.cpp buffer, as the driver term rounds them: the
    log's KV figures are merged per device, so where their totals agree with the analytic plan's
    (to the log's 0.01 MiB a line) the analytic plan's per-cache allocations stand in. Recurrent
    rows need no such stand-in: the driver term rounds them as one buffer per device anyway
    (engine.plan.cuda_driver.cuda_buffers)."""
    mine = [a for a in exact.allocations if a.component == "kv"]
    theirs = [a for a in analytic.allocations if a.component == "kv"]
    agree = all(
        abs(sum(a.bytes for a in mine if a.device == dev) - sum(a.bytes for a in theirs if a.device == dev))
        <= (1 + len(mine)) * MiB // 100  # the log rounds each line to 0.01 MiB
        for dev in {a.device for a in mine + theirs}
    )
    return [a for a in exact.allocations if a.component != "kv"] + (theirs if agree else mine)


def _with_driver(plan: MemoryPlan, driver: list[Allocation]) -> MemoryPlan:
    others = tuple(a for a in plan.allocations if a.component != "driver")
    return dataclasses.replace(plan, allocations=others + tuple(driver))


def _with_weights(dry: MemoryPlan, analytic: MemoryPlan) -> MemoryPlan:
    weights = tuple(a for a in analytic.allocations if a.component == "weights")
    others = tuple(a for a in dry.allocations if a.component != "weights")
    others = _kv_by_layer_devices(others, analytic)
    return dataclasses.replace(
        dry,
        allocations=weights + others,
        notes=dry.notes + ("weights from the analytic placement (a dry run allocates none)",),
    )
