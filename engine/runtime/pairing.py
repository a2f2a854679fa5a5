"""Can this draft serve that target? The GUI's draft picker and ``kvdeck pair`` ask here.

The vocabulary rules are llama.cpp's own, checked in a throwaway runtime child (milliseconds: a
vocab-only load); a Gemma 4 assistant is checked by its own rules from the two headers
(`engine.plan.assistant_rules`: architecture, hidden size, vocabulary, SWA layout, head sizes);
the memory rule is fit with both in one budget at the target's context. The rules themselves,
in words, are in `engine.plan.pairing`.
"""

from __future__ import annotations

from typing import Any

from engine.core.memory_types import Device, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.assistant_rules import ASSISTANT_ARCH, assistant_checks, embedding_length_out
from engine.plan.fit import DraftSpec, fit
from engine.plan.margins import Margins
from engine.plan.pairing import Check, verdict
from engine.runtime.host import RuntimeHost
from engine.runtime.info import plan_devices


def pair_report(
    target_path: str,
    draft_path: str,
    *,
    budget_bytes: int | None = None,
    max_context: int | None = None,
    settings: PlanSettings | None = None,
    devices: list[Device] | None = None,
    margins: Margins | None = None,
) -> dict[str, Any]:
    """Vocabulary rules from llama.cpp itself (in a throwaway child), plus: do both fit together
    at the target's context, keeping ``margins`` free as every other fit of the caller does (the
    window's "Keep free" settings, ``kvdeck pair --margin-mib``). ``settings`` are the target's
    (the draft keeps f16 K/V); the GUI calls this off its thread before loading a draft."""
    target, draft = inspect_gguf(target_path), inspect_gguf(draft_path)
    kind = "assistant" if draft.architecture == ASSISTANT_ARCH else "model"
    if kind == "assistant":  # the Gemma 4 assistant's rules, from the two headers
        checks = assistant_checks(target, draft, embedding_length_out(draft_path))
    else:
        with RuntimeHost() as host:
            checks = [Check(**c) for c in host.pair(target_path, draft_path)]
    if kind == "model" and (target.recurrent or target.hybrid):
        checks.append(
            Check(
                "target can roll back",
                False,
                f"{target.architecture} keeps a recurrent state that cannot be rolled back "
                "past rejected draft tokens",
            )
        )
    if devices is None:
        devices, _ = plan_devices()
    base = settings if settings is not None else PlanSettings(n_ctx=0)
    dsettings = base if settings is None else base.replace(type_k="f16", type_v="f16")
    result = fit(
        target,
        base,
        devices,
        plan_fn=analytic_plan,
        budget_bytes=budget_bytes,
        margins=margins,
        draft=DraftSpec(draft, dsettings, kind),
        max_context=max_context,
    )
    checks.append(
        Check(
            "memory",
            result.fits,
            f"target and {'assistant' if kind == 'assistant' else 'draft'} fit together at "
            f"{result.plan.n_ctx:,} tokens of context "
            f"({result.limited_by} limits it)"
            if result.fits
            else result.reason,
        )
    )
    return verdict(checks) | {"kind": kind}
