"""KV cache quality against memory for every cache type, on real models (issue 9's table).

    python benchmarks/precision_table.py MODEL.gguf [MODEL.gguf ...] [--tokens 30] [--threads N]
                                         [--types f32,f16,...] [--ctx-for-memory 8192] [--out DIR]

For each model: one runtime child, the built-in prompts, K = V for each type, flash attention on,
against an f32/f32 cache (the child generates the f32 reference continuations once). KV bytes
come from the analytic plan at the check's own context and at ``--ctx-for-memory`` tokens.
Writes ``precision-<date>.json`` and ``precision-<date>.md`` to ``--out`` (benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.cli.precision import kv_bytes  # noqa: E402
from engine.core.memory_types import KV_TYPES, MiB, PlanSettings  # noqa: E402
from engine.core.precision_prompts import builtin_names, builtin_prompts  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.protocol import LoadParams  # noqa: E402
from engine.runtime.host import RuntimeHost  # noqa: E402


def run_model(
    path: str, types: list[str], tokens: int, threads: int, ctx_mem: int, fa: str = "on", ref_fa: str = "off"
) -> dict:
    info = inspect_gguf(path)
    rows = []
    with RuntimeHost() as host:
        loaded = host.load(LoadParams(path=path, settings=PlanSettings(n_ctx=256), n_threads=threads))
        for t in types:
            started = time.perf_counter()
            r = host.precision(t, t, builtin_prompts(), tokens, flash_attn=fa, reference_flash_attn=ref_fa)
            rows.append(
                {
                    "type": t,
                    "mean_kl": r.mean_kl,
                    "max_kl": r.max_kl,
                    "top1_agreement": r.top1_agreement,
                    "first_divergence": r.first_divergence,
                    "n_positions": r.n_positions,
                    "n_ctx": r.n_ctx,
                    "kv_bytes": kv_bytes(info, r.n_ctx, t, t, fa),
                    "kv_bytes_at_ctx": kv_bytes(info, ctx_mem, t, t, fa),
                    "seconds": round(time.perf_counter() - started, 2),
                    "per_prompt": r.prompts,
                }
            )
            print(
                f"{Path(path).name} {t}: KL {r.mean_kl:.3g}, top-1 {r.top1_agreement:.3f}, "
                f"first divergence {r.first_divergence}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "model": Path(path).name,
        "description": loaded.description,
        "n_vocab": loaded.n_vocab,
        "n_threads": loaded.n_threads,
        "tokens": tokens,
        "ctx_for_memory": ctx_mem,
        "prompts": builtin_names(),
        "flash_attn": fa,
        "reference_flash_attn": ref_fa,
        "rows": rows,
    }


def markdown(models: list[dict]) -> str:
    out = []
    for m in models:
        ctx = m["rows"][0]["n_ctx"] if m["rows"] else 0
        out += [
            f"### {m['model']} ({m['description']}, vocab {m['n_vocab']:,})",
            "",
            f"{m['tokens']} greedy tokens × {len(m['prompts'])} prompts "
            f"({', '.join(m['prompts'])}), K = V, flash attention {m['flash_attn']}, against "
            f"f32/f32 with flash attention {m['reference_flash_attn']}.",
            "",
            f"| K = V | mean KL | max KL | top-1 | first divergence per prompt | KV @ {ctx} "
            f"| KV @ {m['ctx_for_memory']:,} |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in m["rows"]:
            div = ", ".join("–" if d is None else str(d) for d in r["first_divergence"])
            out.append(
                f"| {r['type']} | {r['mean_kl']:.2e} | {r['max_kl']:.2e} | "
                f"{r['top1_agreement']:.1%} | {div} | {r['kv_bytes'] / MiB:.2f} MiB | "
                f"{r['kv_bytes_at_ctx'] / MiB:.1f} MiB |"
            )
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--types", default=",".join(KV_TYPES))
    ap.add_argument("--ctx-for-memory", type=int, default=8192)
    ap.add_argument("--flash-attn", choices=("on", "off", "auto"), default="on")
    ap.add_argument("--reference-flash-attn", choices=("on", "off"), default="off")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    models = [
        run_model(
            p,
            types,
            args.tokens,
            args.threads,
            args.ctx_for_memory,
            args.flash_attn,
            args.reference_flash_attn,
        )
        for p in args.models
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (
        ""
        if (args.flash_attn, args.reference_flash_attn) == ("on", "off")
        else f"-fa{args.flash_attn}-ref{args.reference_flash_attn}"
    )
    stem = out / f"precision-{time.strftime('%Y-%m-%d')}{tag}"
    stem.with_suffix(".json").write_text(json.dumps(models, indent=2, ensure_ascii=False))
    text = markdown(models)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
