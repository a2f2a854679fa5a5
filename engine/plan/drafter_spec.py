"""Which drafter to fit next to a target: the model's own MTP heads, a Gemma 4 assistant or a
draft model, from what the user chose (``kvdeck fit --mtp`` / ``--draft PATH``, or the window's
draft picker), so that the CLI and the window fit target + drafter the same way.
"""

from __future__ import annotations

import os

from engine.core.errors import KvDeckError
from engine.core.memory_types import PlanSettings
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.drafting import mtp_settings
from engine.plan.fit import DraftSpec

__all__ = ["draft_spec", "drafter_for"]


def draft_spec(
    info: GGUFInfo, settings: PlanSettings, *, mtp: bool, draft_path: str = ""
) -> DraftSpec | None:
    """The drafter asked for, or None; one clear error for one that cannot draft for ``info``
    (``mtp`` on a model without nextn layers, an assistant for another target)."""
    from engine.plan.assistant_rules import ASSISTANT_ARCH, assistant_checks, embedding_length_out, refusal

    if mtp and draft_path:
        raise KvDeckError("--mtp and --draft are two drafters: choose one")
    name = os.path.basename(info.path)
    if mtp:
        if not info.n_layer_nextn:
            raise KvDeckError(f"{name} has no MTP (nextn) layers, so it cannot draft for itself")
        return DraftSpec(info, settings, "mtp")
    if not draft_path:
        return None
    dinfo = inspect_gguf(draft_path)
    if dinfo.architecture == ASSISTANT_ARCH:
        why = refusal(
            name,
            os.path.basename(draft_path),
            assistant_checks(info, dinfo, embedding_length_out(draft_path)),
        )
        if why:
            raise KvDeckError(why)
        return DraftSpec(dinfo, settings, "assistant")
    return DraftSpec(dinfo, settings.replace(type_k="f16", type_v="f16", mtp=False, n_rs_seq=0))


def drafter_for(
    info: GGUFInfo, settings: PlanSettings, mode: str, path: str = ""
) -> tuple[PlanSettings, DraftSpec | None]:
    """(the target's settings to fit, the drafter) for the window's drafting ``mode`` ("mtp",
    "model" with ``path``, anything else none), as ``kvdeck fit --mtp`` / ``--draft`` fits them:
    the MTP heads load with the target (engine.plan.drafting.mtp_settings). A drafter that cannot
    draft for this model (another model's assistant, ``mtp`` without nextn layers, an unreadable
    file) fits the target alone: loading it is refused in words elsewhere."""
    try:
        spec = draft_spec(info, settings, mtp=mode == "mtp", draft_path=path if mode == "model" else "")
    except (KvDeckError, OSError):
        return settings, None
    if spec is not None and spec.kind == "mtp":
        return mtp_settings(info.hybrid, settings), spec
    return settings, spec
