"""``kvdeck bench``: prefill and decode speed of a model, measured the way llama-bench does.

The measuring runs inside the runtime child (``engine.child.bench``) on KV Deck's own generation
path, so the numbers can be set beside ``llama-bench -p N -n N -d N`` on the same file: pp is
prompt processing (random tokens in one sequence), tg decode at a depth, both as the mean
tokens/s over repetitions after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from engine.cli.loading import load_check
from engine.cli.memory import add_plan_options, settings_from_args
from engine.cli.rpc import devices_for, endpoints
from engine.core.errors import KvDeckError, ModelFileError
from engine.core.sampling import PRESETS
from engine.core.units import acceptance_by_position
from engine.protocol import BenchResult, Hello, Loaded, LoadParams

#: engine.child.sampler.SAMPLER_MODES (the parent never imports llama.cpp, so it is repeated here).
SAMPLERS = ("auto", "backend", "backend-topk1", "cpu", "cpu-chain")


def register(sub: Any) -> None:
    """Add ``bench`` to the CLI's subparsers."""
    p = sub.add_parser("bench", help="prefill and decode speed (tokens/s), measured like llama-bench")
    p.add_argument("path")
    p.add_argument("--pp", type=int, default=512, help="prompt tokens (default 512; 0: skip)")
    p.add_argument("--tg", type=int, default=128, help="generated tokens (default 128; 0: skip)")
    p.add_argument("--depth", type=int, default=0, help="tokens already in the context (default 0)")
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: physical cores)")
    # what is loaded and how, as plan/fit/serve take it (one sequence; the context follows --pp/--tg)
    add_plan_options(p, skip={"path", "--ctx", "--parallel", "--json"})
    p.set_defaults(cache_type_k="f16", cache_type_v="f16")  # llama-bench's, not the model's default
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="sample with a preset (default: greedy, as llama-bench compares with)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="auto",
        help="sampling path (default auto: greedy as a numpy argmax, other chains on "
        "the device when there is a GPU)",
    )
    p.add_argument("--json", action="store_true")
    spec = p.add_mutually_exclusive_group()  # speculative decoding: plain against drafted decode
    spec.add_argument(
        "--draft",
        default=None,
        metavar="PATH",
        help="also measure decoding with this draft model or Gemma 4 assistant, and the speed-up",
    )
    spec.add_argument("--lookup", action="store_true", help="also measure n-gram lookup drafting")
    spec.add_argument(
        "--mtp", action="store_true", help="also measure drafting with the model's own MTP heads"
    )
    p.add_argument("--draft-max", type=int, default=8, help="most tokens drafted per step (default 8)")
    p.add_argument(
        "--prompt",
        default=None,
        help="the chat prompt of the drafting comparison "
        "(default: an essay request; quoting tasks favour --lookup)",
    )


def _check(args: argparse.Namespace) -> str:
    path = Path(args.path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"no such file: {path}" if not path.exists() else f"not a file: {path}")
    for name in ("pp", "tg", "depth"):
        if getattr(args, name) < 0:
            raise KvDeckError(f"--{name} must not be negative, not {getattr(args, name)}")
    if args.reps < 1:
        raise KvDeckError(f"--reps must be at least 1, not {args.reps}")
    if args.pp == 0 and args.tg == 0:
        raise KvDeckError("nothing to measure: --pp and --tg are both 0")
    if args.batch < 1 or args.ubatch < 1:
        raise KvDeckError("--batch and --ubatch must be positive")
    if (args.draft or args.lookup or args.mtp) and args.tg == 0:
        raise KvDeckError("--draft, --lookup and --mtp measure decoding: --tg must not be 0")
    if args.draft_max < 1:
        raise KvDeckError(f"--draft-max must be at least 1, not {args.draft_max}")
    if args.draft and not Path(args.draft).expanduser().is_file():
        raise ModelFileError(f"no such draft model file: {args.draft}")
    return str(path)


def context_for(pp: int, tg: int, depth: int) -> int:
    """The context a run needs: pp at depth, or depth (at least one token) plus tg and the
    token sampled last (llama-bench sizes its context as n_prompt + n_gen + n_depth)."""
    return max(depth + pp, max(depth, 1) + tg + 1, 256)


def _stats(samples: list[float]) -> tuple[float | None, float | None]:
    if not samples:
        return None, None
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return round(statistics.fmean(samples), 3), round(sd, 3)


def bench_json(
    path: str, hello: Hello | None, loaded: Loaded, res: BenchResult, settings: dict[str, Any]
) -> dict[str, Any]:
    pp_mean, pp_sd = _stats(res.pp_tokens_per_s)
    tg_mean, tg_sd = _stats(res.tg_tokens_per_s)
    info = hello.system_info if hello else ""
    return {
        "model": path,
        "pp": {
            "n": res.n_prompt,
            "depth": res.depth,
            "tokens_per_s": pp_mean,
            "stddev": pp_sd,
            "samples": [round(x, 3) for x in res.pp_tokens_per_s],
        },
        "tg": {
            "n": res.n_gen,
            "depth": res.depth,
            "tokens_per_s": tg_mean,
            "stddev": tg_sd,
            "samples": [round(x, 3) for x in res.tg_tokens_per_s],
        },
        "settings": {
            **settings,
            "n_ctx": res.n_ctx,
            "n_threads": res.n_threads,
            "n_gpu_layers": loaded.n_gpu_layers,
            "repetitions": res.repetitions,
            "sampler": res.sampler,
            "backend_sampling": res.backend_sampling,
        },
        "device": {
            "devices": res.devices,
            "gpu_offload": loaded.gpu_offload,
            "llama_cpp_python": hello.llama_cpp_python if hello else "",
            "cuda_graphs": "USE_GRAPHS = 1" in info if "CUDA" in info else None,
        },
        "description": loaded.description,
        "graph_reuse": round(res.graph_reuse, 4),
        "warmup_s": round(res.warmup_s, 3),
        "load_s": round(loaded.load_s, 3),
    }


def print_bench(data: dict[str, Any]) -> None:
    s = data["settings"]
    gpu = [d for d in data["device"]["devices"] if not d.startswith("CPU")]
    print(
        f"{data['model']}\n  {data['description']}; K {s['type_k']}, V {s['type_v']}, flash "
        f"attention {s['flash_attn']}, {s['n_threads']} threads, {'; '.join(gpu) or 'CPU only'}"
    )
    for key in ("pp", "tg"):
        row = data[key]
        if row["n"] and row["tokens_per_s"] is not None:
            label = f"{key}{row['n']}" + (f" @ d{row['depth']}" if row["depth"] else "")
            print(f"  {label:<16}{row['tokens_per_s']:>11.2f} ± {row['stddev']:.2f} tokens/s")
    where = "on the device" if s["backend_sampling"] else "on the CPU"
    print(f"  sampler {s['sampler']} ({where}); graph reuse {data['graph_reuse']:.0%}")
    spec = data.get("speculative")
    if spec:
        same = "identical output" if spec["identical"] else "OUTPUT DIFFERS"
        print(
            f"  chat reply, plain {data['plain_tg_tokens_per_s']:.2f} tokens/s, {spec['mode']} drafting "
            f"{data['spec_tg_tokens_per_s']:.2f} tokens/s: speed-up {data['speedup']:.2f}x; "
            f"acceptance {data['acceptance']:.0%}, {spec['tokens_per_target_decode']} tokens per "
            f"target decode; {same}"
        )
        by_pos = acceptance_by_position(spec["drafted_by_position"], spec["accepted_by_position"])
        if by_pos:
            print(f"  {by_pos}")


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.drafting import mtp_settings
    from engine.runtime.host import RuntimeHost

    path = _check(args)
    info = inspect_gguf(path)  # a clear error for a bad file before any process starts
    sampling = PRESETS[args.preset] if args.preset else None
    drafting = bool(args.draft or args.lookup or args.mtp)
    n_ctx = context_for(args.pp, args.tg, args.depth) + (SPEC_PROMPT_ROOM if drafting else 0)
    plan = settings_from_args(args, info).replace(n_ctx=n_ctx)  # what serve and chat load, too
    if args.mtp:
        plan = mtp_settings(info.hybrid, plan, args.draft_max)
    settings = {
        "type_k": plan.type_k,
        "type_v": plan.type_v,
        "flash_attn": plan.flash_attn,
        "n_batch": plan.n_batch,
        "n_ubatch": plan.n_ubatch,
        "n_cpu_moe": plan.n_cpu_moe,
        "load_mode": plan.load_mode,
        "sampling": sampling.to_dict() if sampling else "greedy",
    }
    draft = inspect_gguf(str(Path(args.draft).expanduser())) if args.draft else None
    rpc = endpoints(args)  # workers are probed before the child meets them
    plan = load_check(args, info, plan, draft).placed_on(devices_for(rpc))  # as chat and serve check
    with RuntimeHost(rpc=rpc) as host:
        hello = host.hello
        assert hello is not None
        loaded = host.load(LoadParams(path=path, settings=plan, n_threads=args.threads))
        res = host.bench(args.pp, args.tg, args.depth, args.reps, sampling=sampling, sampler=args.sampler)
        spec = spec_bench(host, loaded, args) if drafting else None
    data = bench_json(path, hello, loaded, res, settings)
    if spec is not None:
        data.update(spec_summary(data, spec))
    print(json.dumps(data, indent=2)) if args.json else print_bench(data)
    return 0


# ----------------------------------------------------------------------------- speculative decoding
#: A reply long enough for --tg tokens; the same prompt for plain and drafted decoding.
SPEC_PROMPT = (
    "Write a detailed, multi-paragraph essay about the history of bread: its origins, "
    "how baking spread across the world, and how bread is made today."
)
SPEC_PROMPT_ROOM = 256


def drafter_mode(host: Any, loaded: Loaded, args: argparse.Namespace) -> tuple[str, int | None]:
    """(generate's draft mode, the drafter's context) for the options; ("", None) with one line on
    stderr when the drafter cannot draft (an assistant for another target, --mtp on a model
    without MTP layers): the plain figures are still measured and printed."""
    import sys

    from engine.core.errors import InvalidSettings

    if args.mtp:
        if loaded.mtp != "ready":
            print(loaded.mtp or "this model cannot draft for itself", file=sys.stderr)
            return "", None
        return "mtp", loaded.n_ctx
    if not args.draft:
        return "lookup", None
    try:
        d = host.load_draft(
            str(Path(args.draft).expanduser()), n_gpu_layers=args.n_gpu_layers, flash_attn=args.flash_attn
        )
    except InvalidSettings as exc:
        print(str(exc), file=sys.stderr)
        return "", None
    return "model", d.n_ctx


def spec_bench(host: Any, loaded: Loaded, args: argparse.Namespace) -> dict[str, Any] | None:
    """Greedy decoding of one chat reply, plain and with drafting, alternating per repetition.

    Both go through the chat's generation path on the same prompt, so the speed-up is what a
    user sees; greedy makes the two outputs comparable token for token (``identical``).
    Speeds are tokens after the first per second of decoding, the same formula for both.
    """
    from engine.chat.conversation import conversation_prompt
    from engine.chat.template import ChatMessage
    from engine.core.sampling import SamplingParams

    greedy = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    mode, draft_n_ctx = drafter_mode(host, loaded, args)
    if not mode:
        return None
    prompt = conversation_prompt(loaded, "", [ChatMessage("user", args.prompt or SPEC_PROMPT)]).text
    for draft in ("", mode):  # warm-up: prefix cache, graphs, the draft's catch-up
        host.generate(prompt, max_tokens=4, sampling=greedy, draft=draft, draft_max=args.draft_max)
    plain: list[float] = []
    drafted: list[float] = []
    identical = True
    counts = [0, 0, 0, 0]  # drafted, accepted, target decodes, tokens
    drafted_at: list[int] = []  # per draft position (1st, 2nd, ... drafted token of a step)
    accepted_at: list[int] = []
    for _ in range(args.reps):
        a = host.generate(prompt, max_tokens=args.tg, sampling=greedy)
        b = host.generate(prompt, max_tokens=args.tg, sampling=greedy, draft=mode, draft_max=args.draft_max)
        plain.append(max(0, len(a.tokens) - 1) / a.decode_s if a.decode_s > 0 else 0.0)
        drafted.append(max(0, len(b.tokens) - 1) / b.decode_s if b.decode_s > 0 else 0.0)
        identical = identical and a.tokens == b.tokens
        drafted_at = _add(drafted_at, b.drafted_at)
        accepted_at = _add(accepted_at, b.accepted_at)
        counts = [
            counts[0] + b.n_drafted,
            counts[1] + b.n_accepted,
            counts[2] + b.n_target_decodes,
            counts[3] + len(b.tokens),
        ]
    return {
        "mode": mode,
        "draft": args.draft or "",
        "plain": plain,
        "spec": drafted,
        "identical": identical,
        "n_drafted": counts[0],
        "n_accepted": counts[1],
        "n_target_decodes": counts[2],
        "n_tokens": counts[3],
        "draft_max": args.draft_max,
        "draft_n_ctx": draft_n_ctx,
        "acceptance_by_position": [round(a / d, 4) if d else None for d, a in zip(drafted_at, accepted_at)],
        "drafted_by_position": drafted_at,
        "accepted_by_position": accepted_at,
    }


def _add(total: list[int], more: list[int]) -> list[int]:
    """Element-wise sum of two per-position counts of any lengths."""
    n = max(len(total), len(more))
    return [(total[i] if i < len(total) else 0) + (more[i] if i < len(more) else 0) for i in range(n)]


def spec_summary(data: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The issue's flat keys plus a ``speculative`` block with the details."""
    plain, _ = _stats(spec["plain"])
    fast, _ = _stats(spec["spec"])
    speedup = round(fast / plain, 3) if plain and fast else None
    acceptance = round(spec["n_accepted"] / spec["n_drafted"], 4) if spec["n_drafted"] else 0.0
    return {
        "pp_tokens_per_s": data["pp"]["tokens_per_s"],
        "tg_tokens_per_s": data["tg"]["tokens_per_s"],
        "plain_tg_tokens_per_s": plain,
        "spec_tg_tokens_per_s": fast,
        "speedup": speedup,
        "acceptance": acceptance,
        "speculative": {
            **{
                k: spec[k]
                for k in (
                    "mode",
                    "draft",
                    "draft_max",
                    "draft_n_ctx",
                    "identical",
                    "n_drafted",
                    "n_accepted",
                    "n_target_decodes",
                    "acceptance_by_position",
                    "drafted_by_position",
                    "accepted_by_position",
                )
            },
            "tokens_per_target_decode": round(spec["n_tokens"] / spec["n_target_decodes"], 3)
            if spec["n_target_decodes"]
            else None,
            "plain_samples": [round(x, 3) for x in spec["plain"]],
            "spec_samples": [round(x, 3) for x in spec["spec"]],
        },
    }
