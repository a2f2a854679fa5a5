"""KV Deck's runtime beside llama.cpp's llama-bench on one synthetic GGUF, in one run (issue 6).

    python benchmarks/gpu_bench.py [--shape llama3-8b|tiny] [--llama-bench PATH] [--threads N]
                                   [--reps N] [--depth 8192] [--kv f16,q8_0,q4_0] [--out DIR]

Writes a llama-3-8B-shaped GGUF with random Q4_0 weights (benchmarks/synthetic_gguf.py), then for each K/V type runs
``llama-bench -p 512 -n 128 -d 0,DEPTH -fa on`` and KV Deck's own benchmark (``engine.child.bench``,
the chat's real hot loop) with the same settings and threads, and finally an ablation of the
sampling paths on the f16 cache. Results: ``gpu-<date>.json`` (``tg_ratio``/``pp_ratio`` =
KV Deck / llama-bench tg128/pp512, same run; per-K/V-type depth results and ratios) and
``gpu-<date>.md``. The JSON is rewritten after every stage, so a run cut short still reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.synthetic_gguf import SHAPES, write_gguf  # noqa: E402


def llama_bench(
    binary: str, model: Path, kv: str, threads: int, reps: int, depths: str, pp: int, tg: int
) -> dict[str, dict[str, Any]]:
    """llama-bench rows keyed "pp512@0", "tg128@8192", ... (same K/V type for K and V)."""
    cmd = [
        binary,
        "-m",
        str(model),
        "-p",
        str(pp),
        "-n",
        str(tg),
        "-d",
        depths,
        "-fa",
        "on",
        "-ctk",
        kv,
        "-ctv",
        kv,
        "-t",
        str(threads),
        "-r",
        str(reps),
        "-ngl",
        "99",
        "-o",
        "json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({out.returncode}): {out.stderr[-2000:]}")
    rows = {}
    for r in json.loads(out.stdout):
        key = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        rows[f"{key}@{r['n_depth']}"] = r
    return rows


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "tokens_per_s": round(statistics.fmean(samples), 2) if samples else None,
        "stddev": round(statistics.stdev(samples), 2) if len(samples) > 1 else 0.0,
        "samples": [round(x, 2) for x in samples],
    }


def _row(res: Any) -> dict[str, Any]:
    return {
        "pp": _summary(res.pp_tokens_per_s),
        "tg": _summary(res.tg_tokens_per_s),
        "sampler": res.sampler,
        "backend_sampling": res.backend_sampling,
        "n_threads": res.n_threads,
        "graph_reuse": round(res.graph_reuse, 4),
        "warmup_s": round(res.warmup_s, 2),
    }


class _Runtime:
    """A KV Deck runtime child with the model loaded; restarted if a measurement kills it."""

    def __init__(self, model: Path, kv: str, threads: int, n_ctx: int) -> None:
        self.params = (model, kv, threads, n_ctx)
        self.host: Any = None
        self.info: dict[str, Any] = {}

    def start(self) -> Any:
        from engine import protocol as P
        from engine.core.memory_types import PlanSettings
        from engine.runtime.host import RuntimeHost

        model, kv, threads, n_ctx = self.params
        self._stack = contextlib.ExitStack()  # the child lives until stop(), across calls
        self.host = self._stack.enter_context(RuntimeHost())
        hello = self.host.hello
        settings = PlanSettings(n_ctx=n_ctx, n_gpu_layers=-1, flash_attn="on", type_k=kv, type_v=kv)
        loaded = self.host.load(P.LoadParams(path=str(model), settings=settings, n_threads=threads))
        self.info = {
            "load_s": round(loaded.load_s, 2),
            "n_ctx": loaded.n_ctx,
            "llama_cpp_python": hello.llama_cpp_python,
            "cuda_graphs": "USE_GRAPHS = 1" in hello.system_info,
        }
        return self.host

    def bench(self, *args: Any, **kw: Any) -> dict[str, Any]:
        """One host.bench; a failure (a crashed child included) is recorded, not raised."""
        try:
            if self.host is None or not self.host.running:
                self.start()
            res = self.host.bench(*args, timeout=600, **kw)
            self.info.setdefault("devices", res.devices)
            return _row(res)
        except Exception as exc:  # noqa: BLE001  (record and go on with the next measurement)
            print(f"  KV Deck bench {args} {kw} failed: {exc}", flush=True)
            if self.host is not None and not self.host.running:
                self.host = None
            return {"error": f"{type(exc).__name__}: {exc}"}

    def stop(self) -> None:
        if self.host is not None:
            self._stack.close()


def kvdeck(
    model: Path, kv: str, threads: int, reps: int, depth: int, pp: int, tg: int, ablation: bool
) -> dict[str, Any]:
    """KV Deck's runtime child on the same file and settings: depth 0 and ``depth``, then
    (for one K/V type) each sampling path and thread count at depth 0."""
    from engine.cli.bench import context_for
    from engine.core.sampling import PRESETS

    rt = _Runtime(model, kv, threads, context_for(pp, tg, depth))
    try:
        out: dict[str, Any] = {}
        for d in (0, depth):
            out[f"d{d}"] = rt.bench(pp, tg, d, reps)
            if "error" in out[f"d{d}"]:  # e.g. device sampling failed: still measure the CPU path
                out[f"d{d}"] = {
                    **rt.bench(pp, tg, d, reps, sampler="cpu"),
                    "auto_error": out[f"d{d}"]["error"],
                }
        if ablation:
            ab: dict[str, Any] = {}
            for mode in ("cpu-chain", "cpu", "backend", "backend-topk1"):
                ab[f"greedy/{mode}"] = rt.bench(0, tg, 0, reps, sampler=mode)
            for mode in ("cpu-chain", "backend"):
                ab[f"balanced/{mode}"] = rt.bench(0, tg, 0, reps, sampler=mode, sampling=PRESETS["Balanced"])
            for n in sorted({1, 2, 4} - {threads}):
                ab[f"greedy/auto/threads={n}"] = rt.bench(0, tg, 0, reps, n_threads=n)
            out["ablation"] = ab
        return {**rt.info, **out}
    finally:
        rt.stop()


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def summarize(res: dict[str, Any], depth: int, pp: int, tg: int) -> None:
    """Ratios KV Deck / llama-bench, each pair from the same run."""
    per_kv: dict[str, Any] = {}
    for kv, r in res["runs"].items():
        lb, kd = r.get("llama_bench", {}), r.get("kvdeck", {})
        after = r.get("llama_bench_after", {})
        row: dict[str, Any] = {}
        for d in (0, depth):
            for test, n in (("pp", pp), ("tg", tg)):
                key = f"{test}{n}@{d}"
                both = [x[key]["avg_ts"] for x in (lb, after) if key in x]
                lb_ts = statistics.fmean(both) if both else None  # before and after KV Deck
                kd_ts = kd.get(f"d{d}", {}).get(test, {}).get("tokens_per_s")
                row[f"{test}{n}@d{d}"] = {
                    "llama_bench": round(lb_ts, 2) if lb_ts else None,
                    "llama_bench_runs": [round(x, 2) for x in both],
                    "kvdeck": kd_ts,
                    "ratio": _ratio(kd_ts, lb_ts),
                }
        per_kv[kv] = row
    res["kv_types"] = per_kv
    f16 = per_kv.get("f16", {})
    res["tg_ratio"] = f16.get(f"tg{tg}@d0", {}).get("ratio")
    res["pp_ratio"] = f16.get(f"pp{pp}@d0", {}).get("ratio")
    base = f16.get(f"tg{tg}@d{depth}", {}).get("kvdeck")
    res["kv_decode_cost"] = {
        kv: {
            "tg_at_depth": row[f"tg{tg}@d{depth}"]["kvdeck"],
            "relative_to_f16": _ratio(row[f"tg{tg}@d{depth}"]["kvdeck"], base),
        }
        for kv, row in per_kv.items()
    }
    ab = res["runs"].get("f16", {}).get("kvdeck", {}).get("ablation")
    lb_tg = f16.get(f"tg{tg}@d0", {}).get("llama_bench")
    if ab:
        res["ablation"] = {
            k: {
                "tg": v["tg"]["tokens_per_s"],
                "ratio": _ratio(v["tg"]["tokens_per_s"], lb_tg),
                "sampler": v["sampler"],
                "n_threads": v["n_threads"],
            }
            if "tg" in v
            else {"error": v.get("error"), "tg": None, "ratio": None, "sampler": "", "n_threads": None}
            for k, v in ab.items()
        }


def markdown(res: dict[str, Any], depth: int, pp: int, tg: int) -> str:
    v = res["versions"]
    lines = [
        f"# KV Deck vs llama-bench on {res['gpu']} ({res['date']})",
        "",
        f"Model: {res['model']['shape']}-shaped {res['model']['type']}, random weights, "
        f"{res['model']['size_bytes'] / 2**30:.2f} GiB. Flash attention on, all layers offloaded, "
        f"{res['threads']} threads, {res['reps']} repetitions, one warm-up, both in one run.",
        f"Versions: llama-cpp-python {v.get('llama_cpp_python')}, llama.cpp {v.get('llama_cpp')}, "
        f"KV Deck {v.get('kvdeck')}, driver {res.get('driver')}, Python {v.get('python')}.",
        "",
        f"**tg_ratio {res.get('tg_ratio')}**, **pp_ratio {res.get('pp_ratio')}** (f16 K/V, depth 0).",
        "",
        "| test | K/V | llama-bench t/s | KV Deck t/s | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for kv, row in res.get("kv_types", {}).items():
        for d in (0, depth):
            for test, n in (("pp", pp), ("tg", tg)):
                c = row.get(f"{test}{n}@d{d}", {})
                label = f"{test}{n}" + (f" @ d{d}" if d else "")
                lines.append(
                    f"| {label} | {kv} | {c.get('llama_bench')} | {c.get('kvdeck')} | {c.get('ratio')} |"
                )
    cost = res.get("kv_decode_cost", {})
    if cost:
        lines += [
            "",
            f"Decode cost of each K/V type at depth {depth} (KV Deck tg{tg}, relative to f16): "
            + ", ".join(f"{kv} {c['relative_to_f16']}" for kv, c in cost.items())
            + ".",
        ]
    if res.get("ablation"):
        lines += [
            "",
            f"Sampling paths, tg{tg} at depth 0, f16 (ratio to llama-bench tg{tg} above):",
            "",
            "| variant | sampler | threads | KV Deck t/s | ratio |",
            "|---|---|---:|---:|---:|",
        ]
        for k, a in res["ablation"].items():
            lines.append(f"| {k} | {a['sampler']} | {a['n_threads']} | {a['tg']} | {a['ratio']} |")
    return "\n".join(lines) + "\n"


def gpu_info() -> tuple[str, str]:
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            .stdout.strip()
            .splitlines()
        )
        name, driver = (x.strip() for x in out[0].split(","))
        return name, driver
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return platform.processor() or platform.machine(), ""


def main() -> int:
    import psutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--model", default="", help="use this GGUF instead of writing one")
    ap.add_argument("--llama-bench", default=shutil.which("llama-bench") or "")
    ap.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--kv", default="f16,q8_0,q4_0")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--kvdeck-rev", default="")
    ap.add_argument("--llama-cpp-rev", default="", help="when llama-bench's build_commit is unknown")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    date = time.strftime("%Y-%m-%d")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"gpu-{date}.json", out_dir / f"gpu-{date}.md"
    gpu, driver = gpu_info()
    import llama_cpp

    res: dict[str, Any] = {
        "date": date,
        "gpu": gpu,
        "driver": driver,
        "threads": args.threads,
        "reps": args.reps,
        "depth": args.depth,
        "flash_attn": "on",
        "versions": {
            "llama_cpp_python": llama_cpp.__version__,
            "kvdeck": args.kvdeck_rev,
            "python": platform.python_version(),
        },
        "runs": {},
    }

    def save() -> None:
        summarize(res, args.depth, args.pp, args.tg)
        json_path.write_text(json.dumps(res, indent=2) + "\n")
        md_path.write_text(markdown(res, args.depth, args.pp, args.tg))

    t0 = time.perf_counter()
    if args.model:
        model = Path(args.model)
        res["model"] = {
            "shape": args.shape,
            "type": "Q4_0",
            "size_bytes": model.stat().st_size,
            "path": str(model),
        }
    else:
        model = Path(os.environ.get("TMPDIR", "/tmp")) / f"synthetic-{args.shape}-q4_0.gguf"
        res["model"] = write_gguf(model, args.shape)
    res["gguf_write_s"] = round(time.perf_counter() - t0, 1)
    print(
        f"model {model} {res['model']['size_bytes'] / 2**30:.2f} GiB in {res['gguf_write_s']} s", flush=True
    )
    for i, kv in enumerate(args.kv.split(",")):
        run: dict[str, Any] = res["runs"].setdefault(kv, {})
        t = time.perf_counter()
        if args.llama_bench:
            try:
                run["llama_bench"] = llama_bench(
                    args.llama_bench, model, kv, args.threads, args.reps, f"0,{args.depth}", args.pp, args.tg
                )
                commit = next(iter(run["llama_bench"].values()), {}).get("build_commit")
                res["versions"]["llama_cpp"] = (
                    commit if commit not in (None, "", "unknown") else args.llama_cpp_rev or commit
                )
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                print(f"llama-bench {kv} failed: {exc}", flush=True)
                run["llama_bench_error"] = str(exc)[-1000:]
        run["kvdeck"] = kvdeck(
            model,
            kv,
            args.threads,
            args.reps,
            args.depth,
            args.pp,
            args.tg,
            ablation=i == 0 and not args.no_ablation,
        )
        if i == 0 and args.llama_bench:  # llama-bench again: KV Deck's depth-0 runs sit between two
            try:
                run["llama_bench_after"] = llama_bench(
                    args.llama_bench, model, kv, args.threads, args.reps, "0", args.pp, args.tg
                )
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                run["llama_bench_after_error"] = str(exc)[-1000:]
        run["wall_s"] = round(time.perf_counter() - t, 1)
        save()
        print(f"{kv}: {json.dumps(res['kv_types'][kv])} ({run['wall_s']} s)", flush=True)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print(markdown(res, args.depth, args.pp, args.tg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
