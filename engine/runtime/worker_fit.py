"""Fit with llama.cpp RPC workers, checked by llama.cpp's own dry run.

The analytic plan is exact for weights and KV on a worker, but its compute buffer there is a
bound (engine.plan.compute_rpc for CPU-backed workers: never under, up to ~6 MiB over on the
loopback dry runs) or an estimate (other workers). So after
the analytic fit, one dry run with the workers (``exact_plan``: no weights sent, no memory
allocated) sizes every compute buffer as llama.cpp will; a device that would then be over its
budget gets its budget lowered by the excess and fit runs again, a few rounds at most.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.memory_types import Device, FitResult, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.analytic import analytic_plan
from engine.plan.fit import fit
from engine.runtime.exact_plan import exact_plan

ROUNDS = 3


def fit_with_workers(
    info: GGUFInfo, settings: PlanSettings, devices: list[Device], **options: Any
) -> FitResult:
    """`engine.plan.fit.fit` (same options), then checked against llama.cpp's dry run while any
    device is a worker's; ``extra["dry_run_rounds"]`` says how many dry runs it took."""
    result = fit(info, settings, devices, plan_fn=analytic_plan, **options)
    if not any(d.endpoint for d in devices):
        return result
    for rounds in range(1, ROUNDS + 1):
        if not result.fits:
            break
        dry = exact_plan(info, result.settings, devices)
        over = {d: dry.bytes_for(d) - b for d, b in result.budgets.items() if dry.bytes_for(d) > b}
        if not over:
            result.extra["dry_run_rounds"] = rounds
            return result
        devices = [
            dataclasses.replace(d, free_bytes=max(0, d.free_bytes - over[d.name])) if d.name in over else d
            for d in devices
        ]
        result = fit(info, settings, devices, plan_fn=analytic_plan, **options)
    result.extra["dry_run_rounds"] = ROUNDS
    return result
