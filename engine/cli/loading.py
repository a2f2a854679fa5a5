"""The check before every load of ``kvdeck chat``, ``bench`` and ``serve``: the user's settings,
placed on the devices there are and refused in one line when llama.cpp would reject them or they
cannot fit (engine.plan.fit.preflight), never a traceback or an abort in the runtime child.

The settings the user chose are kept apart from the placed ones: with llama.cpp RPC workers the
layer split is pinned to the devices of the moment (engine.plan.fit.pin_split), so a load after a
worker went away must start again from what the user chose, their own ``--tensor-split``
included, not from the split pinned for a machine that is gone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from engine.core.memory_types import Device, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.fit import PlanFn


@dataclass(frozen=True)
class LoadCheck:
    """What a command loads, as the user chose it, and how its memory is planned."""

    info: GGUFInfo
    chosen: PlanSettings  # the options as given: no split pinned to any set of devices
    plan_fn: PlanFn  # with a drafter: target and drafting context together

    def placed_on(self, devices: list[Device], chosen_for: list[Device] | None = None) -> PlanSettings:
        """The chosen settings placed on ``devices``; a KvDeckError (one sentence) when they
        cannot load there. ``chosen_for``: the devices the user chose for, when some of them
        went away since (engine.plan.fit.split_left)."""
        from engine.core.build import gpu_backend
        from engine.plan.fit import pin_split, preflight, split_left

        chosen = split_left(self.chosen, chosen_for, devices) if chosen_for is not None else self.chosen
        settings = pin_split(chosen, devices)
        preflight(self.info, settings, devices, gpu_backend(), plan_fn=self.plan_fn)
        return settings


def load_check(
    args: argparse.Namespace, info: GGUFInfo, chosen: PlanSettings, draft: GGUFInfo | None
) -> LoadCheck:
    """The check of ``chosen`` with the drafter of ``--mtp`` or ``--draft`` (``draft``: its
    GGUF): the model's own MTP heads or a Gemma 4 assistant take their context beside the
    target's, so they are planned with it; a separate draft model is no part of this check."""
    from engine.plan.analytic import analytic_plan

    plan_fn: PlanFn = analytic_plan
    if args.mtp or draft is not None:
        from engine.plan.assistant_rules import ASSISTANT_ARCH
        from engine.plan.drafting import with_drafter

        if draft is None or draft.architecture == ASSISTANT_ARCH:
            plan_fn = with_drafter(analytic_plan, draft, args.n_gpu_layers)
    return LoadCheck(info, chosen, plan_fn)
