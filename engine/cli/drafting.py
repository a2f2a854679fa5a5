"""The drafter of ``kvdeck plan|fit --mtp`` and ``--draft PATH``: which kind, checked in one line.

A drafter is sized next to the target at the target's context (engine.plan.drafting for the
model's own MTP heads and a Gemma 4 assistant, the draft model's own plan otherwise). Bad input
(``--mtp`` on a model without nextn layers, an assistant for another target or with other head
sizes) is one sentence, before anything is planned or loaded.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from engine.core.errors import KvDeckError
from engine.core.memory_types import COMPONENTS, Device, MemoryPlan, PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.fit import DraftSpec

KIND_WORDS = {"mtp": "the model's own MTP heads", "assistant": "Gemma 4 assistant", "model": "draft model"}


def add_drafter_options(p: argparse.ArgumentParser, draft_help: str) -> None:
    p.add_argument("--mtp", action="store_true", help="size the model's own MTP heads' drafting context too")
    p.add_argument("--draft", default=None, metavar="PATH", help=draft_help)


def drafter(args: argparse.Namespace, info: GGUFInfo, settings: PlanSettings) -> DraftSpec | None:
    """The drafter the options ask for, or None; one clear error for a drafter that cannot be."""
    from engine.plan.assistant_rules import ASSISTANT_ARCH, assistant_checks, embedding_length_out, refusal

    if args.mtp and args.draft:
        raise KvDeckError("--mtp and --draft are two drafters: choose one")
    name = os.path.basename(info.path)
    if args.mtp:
        if not info.n_layer_nextn:
            raise KvDeckError(f"{name} has no MTP (nextn) layers, so it cannot draft for itself")
        return DraftSpec(info, settings, "mtp")
    if not args.draft:
        return None
    dinfo = inspect_gguf(args.draft)
    if dinfo.architecture == ASSISTANT_ARCH:
        why = refusal(
            name,
            os.path.basename(args.draft),
            assistant_checks(info, dinfo, embedding_length_out(args.draft)),
        )
        if why:
            raise KvDeckError(why)
        return DraftSpec(dinfo, settings, "assistant")
    return DraftSpec(dinfo, settings.replace(type_k="f16", type_v="f16", mtp=False, n_rs_seq=0))


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
