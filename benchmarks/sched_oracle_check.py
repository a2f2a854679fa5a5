"""Check benchmarks/sched_oracle.py against the recorded H200 dry runs, and KV Deck's plan against it.

    python benchmarks/sched_oracle_check.py [--shapes a,b] [--plan] [--sweep N --seed S] [--cache DIR]

Without --sweep: every single-sequence case of gpu-memory-2026-12-04.json (full and partial
offload), the oracle against llama.cpp's measured CUDA0 compute buffer (and, with --plan, the
plan against both). With --sweep: N random settings per run (shape, K/V types, FA, context,
ubatch, three layer counts each, `--n-cpu-moe` for routed-expert shapes), never measured, the
plan against the oracle. Prints the cases off by more than 0.01 MiB; exit status 1 if any.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_compute import SHAPES  # noqa: E402
from benchmarks.sched_oracle import dump, oracle  # noqa: E402
from engine.core.memory_types import MiB  # noqa: E402


def _plan_mib(shape: str, s: dict[str, Any], cache: Path) -> float:
    from benchmarks.gpu_compute import settings_of
    from benchmarks.gpu_compute_report import DEVICES
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.analytic import analytic_plan

    settings = dataclasses.replace(settings_of(s), n_cpu_moe=s.get("n_cpu_moe", 0))
    plan = analytic_plan(inspect_gguf(cache / f"{shape}.gguf"), settings, DEVICES)
    return plan.bytes_for("CUDA0", "compute") / MiB


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-memory-2026-12-04.json"
    )
    ap.add_argument("--shapes", default=",".join(s for s in SHAPES if s != "tiny"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/kvdeck-graphs"))
    ap.add_argument("--plan", action="store_true", help="compare KV Deck's plan with the oracle too")
    ap.add_argument("--sweep", type=int, default=0, help="random settings instead of the recorded ones")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    shapes = a.shapes.split(",")
    cases: list[tuple[str, dict[str, Any], float | None]] = []
    if a.sweep:
        rnd = random.Random(a.seed)
        kvs = [("f16", "f16", "on"), ("f16", "f16", "off"), ("q8_0", "q8_0", "on"), ("q4_0", "q4_0", "on")]
        kvs += [("q8_0", "f16", "on"), ("q4_0", "q8_0", "on"), ("q8_0", "f16", "off")]
        for _ in range(a.sweep):
            shape, (tk, tv, fa) = rnd.choice(shapes), rnd.choice(kvs)
            n_ctx, ub = (
                rnd.choice([3000, 5000, 7777, 20000, 50000, 100000]),
                rnd.choice([64, 128, 384, 512, 1536]),
            )
            n_layer = SHAPES[shape]["n_layer"]
            for ngl in rnd.sample(range(0, n_layer + 1), 3):
                s = dict(ngl=ngl, n_ctx=n_ctx, tk=tk, tv=tv, fa=fa, n_ubatch=ub)
                if SHAPES[shape].get("n_expert") and rnd.random() < 0.5:
                    s.update(ngl=rnd.choice([-1, ngl]), n_cpu_moe=rnd.randint(1, n_layer))
                cases.append((shape, s, None))
    else:
        for g in json.loads(a.json.read_text())["grids"].values():
            for c in g["cases"] + g["real_loads"]:
                if c["shape"] in shapes and c["settings"].get("n_seq", 1) == 1:
                    cases.append((c["shape"], c["settings"], c["devices"]["CUDA0"]["exact_mib"]))
    off = 0
    for shape, s, exact in cases:
        ub = s.get("n_ubatch", 512)
        d = dump(shape, s["n_ctx"], s["tk"], s["tv"], s["fa"], ub, a.cache)
        ngl = s["ngl"] if s["ngl"] >= 0 else 1 << 20
        got = oracle(d, SHAPES[shape]["n_layer"], ngl, s.get("n_cpu_moe", 0)) / MiB
        plan = _plan_mib(shape, s, a.cache) if a.plan or exact is None else None
        bad = (exact is not None and abs(got - exact) > 0.01) or (plan is not None and abs(plan - got) > 0.01)
        off += bad
        if bad:
            print(
                f"  {shape} {s}: oracle {got:.2f}"
                + (f", llama.cpp {exact:.2f}" if exact is not None else "")
                + (f", plan {plan:.2f}" if plan is not None else "")
            )
    what = "plan vs oracle" if a.sweep else "oracle vs llama.cpp" + (" and plan" if a.plan else "")
    print(f"{len(cases)} cases, {off} off by more than 0.01 MiB ({what})")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
