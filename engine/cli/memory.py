"""``kvdeck plan`` and ``kvdeck fit``: the memory numbers of the GUI, on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from engine.cli.args import add_n_cpu_moe, n_cpu_moe
from engine.cli.drafting import add_drafter_options
from engine.cli.rpc import add_rpc_option, endpoints
from engine.core.errors import KvDeckError
from engine.core.memory_types import COMPONENTS, KV_TYPES, Device, MemoryPlan, MiB, PlanSettings
from engine.runtime.pairing import pair_report


class _Skipping:
    """Lets ``add_plan_options`` add everything except the options a command defines its own way."""

    def __init__(self, parser: argparse.ArgumentParser, skip: frozenset[str]) -> None:
        self.parser, self.skip = parser, skip

    def add_argument(self, *names: str, **kwargs: Any) -> Any:
        if names[0] in self.skip:
            return None
        return self.parser.add_argument(*names, **kwargs)


def add_plan_options(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
    """The options that decide what is loaded and how (PlanSettings, through
    ``settings_from_args``), defined once for every command that plans or loads: plan, fit,
    serve, chat and bench. ``skip``: the options a command defines its own way (chat's path
    beside --demo, serve's --parallel), named as on the command line ("path" for the file)."""
    p: Any = _Skipping(parser, frozenset(skip))
    p.add_argument("path")
    p.add_argument("--ctx", type=int, default=None, help="context size (default: 4096, or the fitted one)")
    p.add_argument("--parallel", type=int, default=1, help="parallel sequences (n_seq_max)")
    p.add_argument("--cache-type-k", choices=KV_TYPES, default=None)
    p.add_argument("--cache-type-v", choices=KV_TYPES, default=None)
    p.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--swa-full", action="store_true")
    p.add_argument("--kv-unified", action="store_true")
    p.add_argument("--n-gpu-layers", type=int, default=-1)
    add_n_cpu_moe(p)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--split-mode", choices=("none", "layer", "row", "tensor"), default="layer")
    p.add_argument("--tensor-split", default="", help="ratios per GPU, e.g. 3,1")
    p.add_argument(
        "--load-mode",
        choices=("mmap", "none"),
        default="mmap",
        help="how llama.cpp reads the weights: mapped from the file (default) or copied in "
        "(llama.cpp's --load-mode none; a dry run always copies)",
    )
    p.add_argument("--json", action="store_true")
    add_rpc_option(p)


def settings_from_args(args: argparse.Namespace, info: Any) -> PlanSettings:
    from engine.plan.rules import default_cache_type

    try:
        split = tuple(float(x) for x in args.tensor_split.split(",") if x.strip())
    except ValueError:
        raise KvDeckError(
            f"--tensor-split must be numbers separated by commas, not {args.tensor_split!r}"
        ) from None
    default_type = default_cache_type(info)
    # chat and bench have no --ctx or --parallel: one sequence, its context set by the command
    ctx, parallel = getattr(args, "ctx", None), getattr(args, "parallel", 1)
    for name, value in (("ctx", ctx), ("parallel", parallel), ("batch", args.batch), ("ubatch", args.ubatch)):
        if value is not None and value < (0 if name == "ctx" else 1):
            raise KvDeckError(f"--{name} must be positive, not {value}")
    return PlanSettings(
        n_ctx=ctx if ctx is not None else 4096,
        n_seq_max=parallel,
        kv_unified=args.kv_unified,
        type_k=args.cache_type_k or default_type,
        type_v=args.cache_type_v or default_type,
        flash_attn=args.flash_attn,
        swa_full=args.swa_full,
        n_batch=args.batch,
        n_ubatch=args.ubatch,
        n_gpu_layers=args.n_gpu_layers,
        n_cpu_moe=n_cpu_moe(args),
        split_mode=args.split_mode,
        tensor_split=split,
        load_mode=args.load_mode,
    )


def plan_json(path: str, plan: MemoryPlan, method: str) -> dict[str, Any]:
    devices = []
    for dev in plan.devices():
        row: dict[str, Any] = {"name": dev}
        row.update({c: plan.bytes_for(dev, c) for c in COMPONENTS})
        row["total"] = plan.bytes_for(dev)
        row["resident"] = plan.resident_bytes_for(dev)  # what fit budgets (mapped pages read once left out)
        devices.append(row)
    totals = {c: plan.bytes_for(None, c) for c in COMPONENTS}
    totals["total"] = plan.bytes_for()
    totals["resident"] = plan.resident_bytes_for()
    s = plan.settings
    return {
        "model": path,
        "n_ctx": plan.n_ctx,
        "n_ctx_seq": plan.n_ctx_seq,
        "n_seq": s.n_seq_max,
        "flash_attn": plan.flash_attn_resolved,
        "type_k": s.type_k,
        "type_v": s.type_v,
        "n_cpu_moe": s.n_cpu_moe,
        "method": method,
        "devices": devices,
        "totals": totals,
        "kv_cells": plan.kv_cells,
        "kv_cells_swa": plan.kv_cells_swa,
        "notes": list(plan.notes),
        "allocations": [
            {"component": a.component, "device": a.device, "bytes": a.bytes, "detail": a.detail}
            for a in plan.allocations
        ],
    }


def print_plan(data: dict[str, Any]) -> None:
    fa = {True: "on", False: "off", None: "auto (resolved at load)"}[data["flash_attn"]]
    print(
        f"{data['model']}\n  context {data['n_ctx']} tokens ({data['n_seq']} sequence(s)), "
        f"K {data['type_k']}, V {data['type_v']}, flash attention {fa}, {data['method']} plan"
    )
    print_rows(data["devices"] + [{"name": "all", **data["totals"]}])
    for note in data["notes"]:
        print(f"  · {note}")


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One line per device: bytes per component and the total, in MiB."""
    print(f"  {'device':<8}" + "".join(f"{c:>11}" for c in (*COMPONENTS, "total")))
    for row in rows:
        print(f"  {row['name']:<8}" + "".join(f"{row[c] / MiB:>8.1f}MiB" for c in (*COMPONENTS, "total")))


def _load(args: argparse.Namespace, pin: bool = True) -> tuple[Any, PlanSettings, list[Device], str]:
    """The model, the settings, the devices (workers' included) and why GPUs are absent;
    ``pin``: fix the layer split by free memory (fit pins it by budget itself)."""
    from engine.core.build import gpu_backend
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.fit import pin_split
    from engine.plan.rules import check_settings
    from engine.plan.sparse_caches import unknown_arch_note
    from engine.runtime.info import plan_devices

    info = inspect_gguf(args.path)
    unknown = unknown_arch_note(info)
    if unknown and not getattr(args, "exact", False):  # say so rather than guess numbers
        raise KvDeckError(f"{Path(args.path).name}: {unknown}")
    devices, _why = plan_devices(rpc=endpoints(args))
    settings = settings_from_args(args, info)
    settings = pin_split(settings, devices) if pin else settings
    n_gpus = sum(1 for d in devices if d.kind == "gpu")
    errors = [p for p in check_settings(info, settings, n_gpus, gpu_backend()) if p.severity == "error"]
    if errors:
        raise KvDeckError(errors[0].message)
    return info, settings, devices, _why


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.cli.drafting import KIND_WORDS, combined, drafter, drafter_plan
    from engine.plan.analytic import analytic_plan

    info, settings, devices, _ = _load(args)
    spec = drafter(args, info, settings)
    if spec is not None and spec.kind == "mtp":
        from engine.plan.drafting import mtp_settings

        settings = mtp_settings(info.hybrid, settings)
    method = "exact" if args.exact else "analytic"
    if args.exact and (spec is None or spec.kind == "model"):
        from engine.runtime.exact_plan import exact_plan

        plan = exact_plan(info, settings, devices)
    else:
        plan = analytic_plan(info, settings, devices)
    data = plan_json(args.path, plan, method)
    if spec is not None:
        plan, dplan = drafter_plan(spec, info, plan, devices, args.exact)
        data = plan_json(args.path, plan, method)
        data["drafter"] = plan_json(spec.info.path, dplan, method) | {"kind": spec.kind}
        data["combined"] = combined([plan, dplan])
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print_plan(data)
    if spec is not None:
        print(f"drafter: {KIND_WORDS[spec.kind]}")
        print_plan(data["drafter"])
        print("target + drafter")
        print_rows(data["combined"])
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from engine.cli.drafting import drafter
    from engine.plan.margins import Margins, per_device_mib
    from engine.runtime.worker_fit import fit_with_workers

    info, settings, devices, _ = _load(args, pin=False)
    draft = drafter(args, info, settings)
    if draft is not None and draft.kind == "mtp":
        from engine.plan.drafting import mtp_settings

        settings = mtp_settings(info.hybrid, settings)
    budget, per_device = per_device_mib(args.budget_mib, "--budget-mib")
    devices = [_capped(d, per_device) for d in devices]
    margins = Margins.from_options(args.margin_mib, args.cpu_margin_mib)
    result = fit_with_workers(  # = fit(); with workers, checked by llama.cpp's dry run
        info,
        settings,
        devices,
        budget_bytes=budget,
        margins=margins,
        draft=draft,
        max_context=args.ctx,
    )
    dplan = result.extra.get("draft_plan")
    data = {
        "fits": result.fits,
        "n_ctx": result.plan.n_ctx,
        "n_gpu_layers": result.settings.n_gpu_layers,
        "n_cpu_moe": result.settings.n_cpu_moe,
        "tensor_split": list(result.settings.tensor_split),  # pinned with workers (fit.pin_split)
        "dry_run_rounds": result.extra.get("dry_run_rounds", 0),  # with workers (runtime.worker_fit)
        "limited_by": result.limited_by,
        "reason": result.reason,
        "budgets": result.budgets,
        "plan": plan_json(args.path, result.plan, "analytic"),
        "draft": None
        if dplan is None or draft is None
        else {
            "kind": draft.kind,
            "n_ctx": dplan.n_ctx,
            "n_gpu_layers": result.settings.n_gpu_layers,
            "plan": plan_json(draft.info.path, dplan, "analytic"),
        },
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        verdict = "fits" if result.fits else "does NOT fit"
        print(
            f"{verdict}: context {data['n_ctx']} tokens, GPU layers {data['n_gpu_layers']}; "
            f"limited by {result.limited_by}: {result.reason}"
        )
        print_plan(data["plan"])
    if not result.fits:  # the same one-line contract as every other refusal
        raise KvDeckError(f"{Path(args.path).name} {result.reason}")
    return 0


def _capped(device: Device, per_device: dict[str, int]) -> Device:
    """The device with a per-device (or per-worker) budget as its free memory."""
    cap = per_device.get(device.name, per_device.get(device.endpoint) if device.endpoint else None)
    return device if cap is None else dataclasses.replace(device, free_bytes=min(device.free_bytes, cap))


def cmd_pair(args: argparse.Namespace) -> int:
    """``kvdeck pair``: :func:`pair_report` as JSON or as one line per rule."""
    from engine.plan.margins import Margins

    budget = args.budget_mib * MiB if args.budget_mib is not None else None
    margins = Margins.from_options(args.margin_mib, args.cpu_margin_mib)
    data = pair_report(args.target, args.draft, budget_bytes=budget, margins=margins, max_context=args.ctx)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        what = (
            " (a Gemma 4 assistant: it reads the target's KV cache)"
            if data.get("kind") == "assistant"
            else ""
        )
        print(("compatible" if data["compatible"] else "NOT compatible") + what)
        for c in data["checks"]:
            print(f"  {'ok ' if c['ok'] else 'NO '} {c['name']}: {c['detail']}")
    return 0


def register(sub: Any) -> None:
    """Add ``plan`` and ``fit`` to the CLI's subparsers."""
    p = sub.add_parser("plan", help="predict memory per device and component before loading")
    add_plan_options(p)
    p.add_argument("--exact", action="store_true", help="ask llama.cpp itself (a dry run, no allocation)")
    add_drafter_options(p, "also plan this draft model or Gemma 4 assistant at the target's context")
    f = sub.add_parser("fit", help="largest context (then most GPU layers) that fits the memory budget")
    add_plan_options(f)
    f.add_argument(
        "--budget-mib",
        default=None,
        metavar="MIB|DEV=MIB,…",
        help="memory budget per GPU (or RAM) in MiB; per device (CUDA1=2048) or per worker "
        "(10.0.0.5:50052=6144)",
    )
    _add_margin_options(f)
    add_drafter_options(f, "a draft model or Gemma 4 assistant fitted with the same context")
    p2 = sub.add_parser("pair", help="can DRAFT speculate for TARGET? each rule with its verdict")
    p2.add_argument("target")
    p2.add_argument("draft")
    p2.add_argument("--ctx", type=int, default=None, help="largest context to consider")
    p2.add_argument("--budget-mib", type=int, default=None)
    _add_margin_options(p2)  # the memory rule is a fit: the same margins
    p2.add_argument("--json", action="store_true")


def _add_margin_options(p: Any) -> None:
    p.add_argument(
        "--margin-mib",
        default=None,
        metavar="MIB|DEV=MIB,…",
        help="safety margin per GPU in MiB (default 1024, like llama.cpp's -fitt); "
        "per device: CUDA0=2048,CUDA1=1024; both: 1536,CUDA1=512",
    )
    p.add_argument(
        "--cpu-margin-mib",
        type=int,
        default=None,
        help="safety margin of host RAM in MiB (default 1024); --margin-mib never applies to the host",
    )
