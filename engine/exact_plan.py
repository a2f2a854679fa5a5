"""The exact plan: ask llama.cpp itself, in a throwaway child process, without allocating.

A no_alloc dry run builds the real context (so flash-attention "auto" is resolved and the
compute buffers are sized by ggml's own allocator) but gives weights and KV dummy buffers. It
runs in its own short-lived process: hostile metadata can abort llama.cpp, and the loaded model
of the chat must never pay for that. Weights are printed as 0.00 in a dry run, so they come from
the analytic placement, which is exact for tensor bytes.
"""
from __future__ import annotations

import dataclasses

from engine import protocol as P
from engine.gguf_inspect import GGUFInfo
from engine.host import RuntimeHost
from engine.memory_log import MemoryLogParser
from engine.memory_plan import analytic_plan
from engine.memory_types import Device, MemoryPlan, PlanSettings


def plan_from_log(lines: list[str], settings: PlanSettings, source: str) -> MemoryPlan:
    parser = MemoryLogParser()
    for line in lines:
        parser.feed(line)
    return parser.result(settings, source)


def exact_plan(info: GGUFInfo, settings: PlanSettings, devices: list[Device],
               timeout: float = 300) -> MemoryPlan:
    """Sizes from llama.cpp's own dry run, weights from the analytic placement."""
    host = RuntimeHost()
    host.start()
    try:
        host.wait_ready()
        loaded = host.load(dataclasses.replace(P.load_params(info.path, settings), dry_run=True),
                           timeout=timeout)
    finally:
        host.stop()
    dry = plan_from_log(loaded.memory_log, settings, "exact")
    analytic = analytic_plan(info, settings, devices)
    weights = tuple(a for a in analytic.allocations if a.component == "weights")
    others = tuple(a for a in dry.allocations if a.component != "weights")
    return dataclasses.replace(dry, allocations=weights + others,
                               notes=dry.notes + ("weights from the analytic placement (a dry run "
                                                  "allocates none)",))
