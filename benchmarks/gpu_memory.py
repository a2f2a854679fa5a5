"""Memory truth on a real GPU, in one run: plan (analytic and exact) against what llama.cpp
allocated, per device and component, and ``fit`` against llama.cpp's ``llama-fit-params``.

    python benchmarks/gpu_memory.py [--out DIR] [--fit-params PATH]

Writes a Llama-3.1-8B-shaped GGUF (random Q4_0 weights, 128k training context) and, for a set of
cache settings, compares the analytic plan, the exact plan (a no-alloc dry run) and the sizes
llama.cpp reports when it really loads (its own log). Then, for budgets of 8/16/24/40 GiB, runs
KV Deck's fit and ``llama-fit-params`` with the same usable memory (budget minus 1 GiB margin)
and loads the model at KV Deck's fitted settings to prove they load. Results go to
``gpu-memory-<date>.json`` and ``.md`` in the output folder.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_bench import SHAPES, write_gguf  # noqa: E402
from engine import protocol as P  # noqa: E402
from engine.exact_plan import exact_plan, plan_from_log  # noqa: E402
from engine.fit import fit  # noqa: E402
from engine.gguf_inspect import inspect_gguf  # noqa: E402
from engine.host import RuntimeHost  # noqa: E402
from engine.memory_plan import analytic_plan  # noqa: E402
from engine.memory_types import COMPONENTS, GiB, MiB, MemoryPlan, PlanSettings  # noqa: E402
from engine.runtime_info import plan_devices  # noqa: E402

SHAPES["llama31-8b"] = {**SHAPES["llama3-8b"], "n_ctx_train": 131072}
CASES = [
    dict(n_ctx=8192, type_k="f16", type_v="f16", flash_attn="on"),
    dict(n_ctx=32768, type_k="f16", type_v="f16", flash_attn="auto"),
    dict(n_ctx=32768, type_k="q8_0", type_v="q8_0", flash_attn="on"),
    dict(n_ctx=65536, type_k="q4_0", type_v="q4_0", flash_attn="on"),
    dict(n_ctx=8192, type_k="f16", type_v="f16", flash_attn="off"),
    dict(n_ctx=16384, type_k="f16", type_v="f16", flash_attn="on", n_seq_max=4),
    dict(n_ctx=16384, type_k="f16", type_v="f16", flash_attn="on", n_gpu_layers=20),
]
BUDGETS_GIB = (8, 16, 24, 40)


def table(plan: MemoryPlan) -> dict[str, dict[str, int]]:
    return {d: {c: plan.bytes_for(d, c) for c in COMPONENTS} for d in plan.devices()}


def load_measured(host: RuntimeHost, model: Path, s: PlanSettings) -> tuple[MemoryPlan | None, str]:
    try:
        loaded = host.load(P.load_params(str(model), s), timeout=600)
    except Exception as exc:  # noqa: BLE001 - recorded in the results
        return None, str(exc)
    host.unload()
    return plan_from_log(loaded.memory_log, s, "measured"), ""


def fit_params(binary: str, model: Path, free_mib: int, budget_mib: int) -> dict[str, Any]:
    margin = max(0, free_mib - budget_mib + 1024)
    r = subprocess.run([binary, "-m", str(model), "-fitt", str(margin)], capture_output=True,
                       text=True, timeout=600)
    m = re.search(r"-c (\d+) -ngl (-?\d+)", r.stdout + r.stderr)
    return {"n_ctx": int(m.group(1)) if m else None, "n_gpu_layers": int(m.group(2)) if m else None,
            "margin_mib": margin, "rc": r.returncode, "tail": (r.stdout + r.stderr)[-400:]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--fit-params", default=shutil.which("llama-fit-params") or "")
    ap.add_argument("--model-dir", default="/tmp")
    ap.add_argument("--shape", default="llama31-8b", help="tiny: a quick check without a GPU")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model_dir) / f"{args.shape}-q4_0.gguf"
    t = time.time()
    meta = write_gguf(model, args.shape)
    info = inspect_gguf(model)
    devices, note = plan_devices()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "model": meta, "write_s": round(time.time() - t, 1),
                           "devices": [d.__dict__ for d in devices], "gpu_note": note, "cases": [], "fit": []}
    host = RuntimeHost()
    host.start()
    host.wait_ready()
    for case in CASES:
        s = PlanSettings(**case)
        a = analytic_plan(info, s, devices)
        t = time.time()
        e = exact_plan(info, s, devices)
        exact_s = time.time() - t
        m, err = load_measured(host, model, s)
        res["cases"].append({"settings": case, "analytic": table(a), "exact": table(e),
                             "measured": table(m) if m else None, "error": err,
                             "exact_wall_s": round(exact_s, 2), "flash_attn_exact": e.flash_attn_resolved})
        (out / f"gpu-memory-{res['date']}.json").write_text(json.dumps(res, indent=1))
    gpu = next((d for d in devices if d.kind == "gpu"), None)
    for budget in BUDGETS_GIB:
        r = fit(info, PlanSettings(n_ctx=0), devices, plan_fn=analytic_plan, budget_bytes=budget * GiB,
                margin_bytes=1024 * MiB)
        ok, err = (False, "did not fit")
        if r.fits:
            m, err = load_measured(host, model, r.settings)
            ok = m is not None
        ref = fit_params(args.fit_params, model, gpu.free_bytes // MiB, budget * 1024) if (
            args.fit_params and gpu) else None
        res["fit"].append({"budget_gib": budget, "kvdeck": {"n_ctx": r.plan.n_ctx, "n_gpu_layers":
                           r.settings.n_gpu_layers, "limited_by": r.limited_by, "fits": r.fits},
                           "loads": ok, "load_error": err, "llama_fit_params": ref})
        (out / f"gpu-memory-{res['date']}.json").write_text(json.dumps(res, indent=1))
    host.stop()
    print(json.dumps(res, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
