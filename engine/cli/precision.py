"""``kvdeck precision``: what a KV cache type costs in quality, measured on the user's own model.

The check itself runs in the runtime child (engine.child.precision); this module validates the
request before any process starts (so a bad type or an impossible combination is one line and
exit status 2, as everywhere in the CLI), prices the memory with the analytic plan at the
context the check used, and prints a table or the JSON contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.core.errors import KvDeckError
from engine.core.memory_types import KV_TYPES, MiB, PlanSettings
from engine.core.precision_metrics import finite_or_none
from engine.core.precision_prompts import builtin_names, builtin_prompts, check_prompts, load_prompts
from engine.protocol import PrecisionResult

REFERENCE = ("f32", "f32")
MAX_TOKENS = 512


def register(sub: Any) -> None:
    """Add ``precision`` to the CLI's subparsers."""
    p = sub.add_parser(
        "precision",
        help="compare a KV cache type with an f32 cache on this model "
        "(KL divergence, top-1 agreement, first divergence)",
    )
    p.add_argument("path")
    p.add_argument("--cache-type-k", choices=KV_TYPES, required=True)
    p.add_argument("--cache-type-v", choices=KV_TYPES, required=True)
    p.add_argument(
        "--prompts",
        default=None,
        help="UTF-8 text file, one prompt per paragraph (blank-line separated); "
        "default: built-in code, math, prose, German and French prompts",
    )
    p.add_argument("--tokens", type=int, default=30, help="greedy tokens per prompt (default 30)")
    p.add_argument(
        "--flash-attn",
        choices=("auto", "on", "off"),
        default="on",
        help="for the candidate cache (default on, as llama.cpp usually resolves "
        "auto; quantized V caches need it). The f32 reference runs without: "
        "with it llama.cpp casts f32 K/V to f16",
    )
    p.add_argument(
        "--reference-flash-attn",
        choices=("off", "on"),
        default="off",
        help="for the f32 reference (default off: the unrounded model; on: f32 "
        "rounded to f16 inside attention, i.e. the cost beyond an f16 cache)",
    )
    p.add_argument(
        "--ctx",
        type=int,
        default=0,
        help="context of the check (default: just enough for the longest prompt)",
    )
    p.add_argument("--n-gpu-layers", type=int, default=-1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")


def _validate(args: argparse.Namespace) -> tuple[Any, list[str], list[str]]:
    """GGUF info, prompts and their names; KvDeckError for anything llama.cpp would refuse."""
    from engine.core.build import gpu_backend
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.rules import check_settings
    from engine.runtime.info import plan_devices

    if not 1 <= args.tokens <= MAX_TOKENS:
        raise KvDeckError(f"--tokens must be between 1 and {MAX_TOKENS}, not {args.tokens}")
    if args.ctx < 0:
        raise KvDeckError(f"--ctx must be positive, not {args.ctx}")
    if args.prompts:
        prompts = load_prompts(args.prompts)
        names = [f"prompt {i}" for i in range(1, len(prompts) + 1)]
    else:
        prompts, names = check_prompts(builtin_prompts()), builtin_names()
    info = inspect_gguf(args.path)
    devices, _ = plan_devices()
    n_gpus = sum(1 for d in devices if d.kind == "gpu")
    pairs = ((args.cache_type_k, args.cache_type_v, args.flash_attn), (*REFERENCE, args.reference_flash_attn))
    for tk, tv, fa in pairs:
        settings = PlanSettings(
            n_ctx=args.ctx or 256, type_k=tk, type_v=tv, flash_attn=fa, n_gpu_layers=args.n_gpu_layers
        )
        errors = [p for p in check_settings(info, settings, n_gpus, gpu_backend()) if p.severity == "error"]
        if errors:
            raise KvDeckError(errors[0].message)
    return info, prompts, names


def kv_bytes(info: Any, n_ctx: int, type_k: str, type_v: str, flash_attn: str, n_gpu_layers: int = -1) -> int:
    """KV cache bytes llama.cpp allocates for these types at this context (analytic plan)."""
    from engine.plan.analytic import analytic_plan
    from engine.runtime.info import plan_devices

    devices, _ = plan_devices()
    settings = PlanSettings(
        n_ctx=n_ctx,
        type_k=type_k,
        type_v=type_v,
        flash_attn=flash_attn,  # type: ignore[arg-type]
        n_gpu_layers=n_gpu_layers,
    )
    return analytic_plan(info, settings, devices).bytes_for(None, "kv")


def result_json(
    path: str, info: Any, r: PrecisionResult, names: list[str], n_gpu_layers: int = -1
) -> dict[str, Any]:
    """The ``kvdeck precision --json`` contract (extra keys beyond the issue's are additive)."""
    ref_bytes = kv_bytes(
        info, r.n_ctx, r.reference_type_k, r.reference_type_v, r.reference_flash_attn, n_gpu_layers
    )
    cand_bytes = kv_bytes(info, r.n_ctx, r.type_k, r.type_v, r.flash_attn, n_gpu_layers)
    per_prompt = [
        {"name": name, **{k: finite_or_none(v) if isinstance(v, float) else v for k, v in p.items()}}
        for name, p in zip(names, r.prompts)
    ]
    return {
        "model": path,
        "n_ctx": r.n_ctx,
        "n_tokens": r.n_tokens,
        "flash_attn": r.flash_attn,
        "reference": {
            "type_k": r.reference_type_k,
            "type_v": r.reference_type_v,
            "flash_attn": r.reference_flash_attn,
            "kv_bytes": ref_bytes,
        },
        "candidate": {
            "type_k": r.type_k,
            "type_v": r.type_v,
            "flash_attn": r.flash_attn,
            "mean_kl": finite_or_none(r.mean_kl),
            "max_kl": finite_or_none(r.max_kl),
            "top1_agreement": r.top1_agreement,
            "first_divergence": list(r.first_divergence),
            "n_positions": r.n_positions,
            "kv_bytes": cand_bytes,
            "reference_kv_bytes": ref_bytes,
            "kv_saved_bytes": ref_bytes - cand_bytes,
            "per_prompt": per_prompt,
        },
        "elapsed_s": round(r.elapsed_s, 3),
    }


def print_result(data: dict[str, Any]) -> None:
    c, ref = data["candidate"], data["reference"]
    kl = "inf (broken cache)" if c["mean_kl"] is None else f"{c['mean_kl']:.3g}"
    print(
        f"{data['model']}\n  K {c['type_k']} / V {c['type_v']} (flash attention "
        f"{c['flash_attn']}) against K {ref['type_k']} / V {ref['type_v']} (flash attention "
        f"{ref['flash_attn']}), {data['n_tokens']} tokens per prompt, context {data['n_ctx']}"
    )
    print(f"  {'prompt':<10}{'mean KL':>11}{'max KL':>11}{'top-1':>8}  first divergence")
    for p in c["per_prompt"]:
        div = "none" if p["first_divergence"] is None else f"token {p['first_divergence']}"
        mean = "inf" if p["mean_kl"] is None else f"{p['mean_kl']:.3g}"
        high = "inf" if p["max_kl"] is None else f"{p['max_kl']:.3g}"
        print(f"  {p['name']:<10}{mean:>11}{high:>11}{p['top1_agreement']:>8.1%}  {div}")
    print(
        f"  mean KL {kl}, top-1 agreement {c['top1_agreement']:.1%}; KV cache "
        f"{c['kv_bytes'] / MiB:.2f} MiB instead of {c['reference_kv_bytes'] / MiB:.2f} MiB "
        f"at this context ({c['kv_bytes'] / max(1, c['reference_kv_bytes']):.0%})"
    )


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rchecking… {done}/{total}")
        sys.stderr.flush()


def cmd_precision(args: argparse.Namespace) -> int:
    from engine.runtime.host import RuntimeHost

    info, prompts, names = _validate(args)
    try:
        with RuntimeHost() as host:
            host.load_for_precision(args.path, args.n_gpu_layers, args.threads)
            result = host.precision(
                args.cache_type_k,
                args.cache_type_v,
                prompts,
                args.tokens,
                flash_attn=args.flash_attn,
                n_ctx=args.ctx,
                reference_flash_attn=args.reference_flash_attn,
                on_progress=None if args.json else _progress,
            )
    finally:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    data = result_json(args.path, info, result, names, args.n_gpu_layers)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_result(data)
    return 0
