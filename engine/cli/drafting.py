"""The drafter of ``kvdeck plan|fit --mtp`` and ``--draft PATH``: which kind, checked in one line.

A drafter is sized next to the target at the target's context (engine.plan.drafting for the
model's own MTP heads and a Gemma 4 assistant, the draft model's own plan otherwise). Bad input
(``--mtp`` on a model without nextn layers, an assistant for another target or with other head
sizes) is one sentence, before anything is planned or loaded.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.core.memory_types import COMPONENTS, Device, MemoryPlan, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.fit import DraftSpec

KIND_WORDS = {"mtp": "the model's own MTP heads", "assistant": "Gemma 4 assistant", "model": "draft model"}


def add_drafter_options(p: argparse.ArgumentParser, draft_help: str) -> None:
    p.add_argument("--mtp", action="store_true", help="size the model's own MTP heads' drafting context too")
    p.add_argument("--draft", default=None, metavar="PATH", help=draft_help)


def drafter(args: argparse.Namespace, info: GGUFInfo, settings: PlanSettings) -> DraftSpec | None:
    """The drafter the options ask for, or None; one clear error for a drafter that cannot be."""
    from engine.plan.drafter_spec import draft_spec

    return draft_spec(info, settings, mtp=args.mtp, draft_path=args.draft or "")


def drafter_plan(
    spec: DraftSpec, info: GGUFInfo, target: MemoryPlan, devices: list[Device], exact: bool
) -> tuple[MemoryPlan, MemoryPlan]:
    """(target, drafter) plans; ``exact``: both from llama.cpp's dry run (the MTP heads' and an
    assistant's context in the same run as the target's, split by context)."""
    from engine.plan.analytic import analytic_plan
    from engine.plan.drafting import drafting_plan

    if spec.kind == "model":
        ds = spec.settings.replace(n_ctx=target.n_ctx)
        if exact:
            from engine.runtime.exact_plan import exact_plan

            return target, exact_plan(spec.info, ds, devices)
        return target, analytic_plan(spec.info, ds, devices)
    assistant = spec.info if spec.kind == "assistant" else None
    if exact:
        from engine.runtime.exact_plan import exact_plans

        t, plan = exact_plans(info, target.settings, devices, assistant)
        if plan is not None:
            return t, plan
    return target, drafting_plan(info, target, devices, assistant, target.settings.n_gpu_layers)


def combined(plans: list[MemoryPlan]) -> list[dict[str, Any]]:
    """Per device and component, the plans added up (what target + drafter need together)."""
    devices: list[str] = []
    for p in plans:
        devices += [d for d in p.devices() if d not in devices]
    rows = []
    for dev in devices:
        row: dict[str, Any] = {"name": dev}
        row.update({c: sum(p.bytes_for(dev, c) for p in plans) for c in COMPONENTS})
        row["total"] = sum(p.bytes_for(dev) for p in plans)
        rows.append(row)
    return rows
