"""Memory truth on a real GPU, in one run: plan (analytic and exact) against what llama.cpp
allocated, per device and component, and ``fit`` against llama.cpp's ``llama-fit-params``.

    python benchmarks/gpu_memory.py [--out DIR] [--fit-params PATH]

Writes a Llama-3.1-8B-shaped GGUF (random Q4_0 weights, 128k training context) and, for a set of
cache settings, compares the analytic plan, the exact plan (a no-alloc dry run) and the sizes
llama.cpp reports when it really loads (its own log). Then, for budgets of 8/16/24/40 GiB, runs
KV Deck's fit and ``llama-fit-params`` with the same usable memory (budget minus 1 GiB margin),
again with KV Deck given the free memory llama-fit-params itself read (after creating its CUDA
context), and loads the model at KV Deck's fitted settings to prove they load. NVML's reading of
the runtime child, minus llama.cpp's buffers, gives what a CUDA process holds outside them. Results go to
``gpu-memory-<date>.json`` and ``.md`` in the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from benchmarks.synthetic_gguf import SHAPES, write_gguf  # noqa: E402
from engine import protocol as P  # noqa: E402
from engine.core.memory_types import COMPONENTS, GiB, MemoryPlan, MiB, PlanSettings  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402
from engine.plan.fit import fit  # noqa: E402
from engine.runtime.exact_plan import exact_plan, plan_from_log  # noqa: E402
from engine.runtime.host import RuntimeHost  # noqa: E402
from engine.runtime.info import plan_devices  # noqa: E402
from engine.runtime.telemetry import Telemetry  # noqa: E402

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


def load_measured(
    host: RuntimeHost,
    model: Path,
    s: PlanSettings,
    tel: Telemetry | None = None,
    footprint: list[dict[str, Any]] | None = None,
) -> tuple[MemoryPlan | None, str]:
    try:
        loaded = host.load(P.LoadParams(str(model), s), timeout=600)
    except Exception as exc:  # noqa: BLE001 - recorded in the results
        return None, str(exc)
    plan = plan_from_log(loaded.memory_log, s, "measured")
    if tel is not None and footprint is not None:
        held = child_gpu_mib(tel, host.pid)
        buffers = sum(a.bytes for a in plan.allocations if a.device.startswith("CUDA")) / MiB
        footprint.append(
            {
                "settings": s.to_dict(),
                "child_nvml_mib": held,
                "buffers_mib": round(buffers, 1),
                "outside_buffers_mib": None if held is None else round(held - buffers, 1),
            }
        )
    host.unload()
    return plan, ""


def fit_params(binary: str, model: Path, free_mib: int, budget_mib: int) -> dict[str, Any]:
    """llama-fit-params with a margin that leaves ``budget_mib - 1024`` of *our* free reading;
    its own free reading (taken after it created its CUDA context) comes back as ``free_mib``."""
    margin = max(0, free_mib - budget_mib + 1024)
    r = subprocess.run(
        [binary, "-m", str(model), "-fitt", str(margin), "-lv", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    m = re.search(r"-c (\d+) -ngl (-?\d+)", out)
    f = re.search(r"MiB of device memory vs\. (\d+) MiB of free device memory", out)
    return {
        "n_ctx": int(m.group(1)) if m else None,
        "n_gpu_layers": int(m.group(2)) if m else None,
        "margin_mib": margin,
        "free_mib": int(f.group(1)) if f else None,
        "rc": r.returncode,
        "tail": out[-400:],
    }


def child_gpu_mib(tel: Telemetry, pid: int | None) -> float | None:
    """What NVML says the runtime child holds on the first GPU (None without a reading)."""
    if not pid:
        return None
    gpus = tel.snapshot([pid]).gpus
    return round(gpus[0].this_app_bytes / MiB, 1) if gpus else None


def write_md(res: dict[str, Any], path: Path) -> None:
    """The run as the tables the closing note quotes."""
    rows = [
        "| settings | device | component | analytic MiB | exact MiB | measured MiB | analytic error |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        label = " ".join(f"{k}={v}" for k, v in c["settings"].items())
        for dev, comps in c["analytic"].items():
            for comp, a in comps.items():
                e = c["exact"].get(dev, {}).get(comp, 0)
                m = (c["measured"] or {}).get(dev, {}).get(comp, 0)
                if a or e or m:
                    pct = f" ({(a - m) / m * 100:+.1f} %)" if m else ""
                    rows.append(
                        f"| {label} | {dev} | {comp} | {a / MiB:.1f} | {e / MiB:.1f} | "
                        f"{m / MiB:.1f} | {(a - m) / MiB:+.1f} MiB{pct} |"
                    )
    rows += [
        "",
        "Runtime child on the GPU outside llama.cpp's buffers (NVML minus buffers): "
        + ", ".join(f"{f['outside_buffers_mib']}" for f in res.get("footprint", []))
        + " MiB.",
        "",
        "| budget | KV Deck n_ctx (reserve) | KV Deck n_ctx given llama-fit-params' free "
        "reading | llama-fit-params n_ctx | its free reading MiB | loads |",
        "|---|---|---|---|---|---|",
    ]
    for f in res["fit"]:
        ref, same = f["llama_fit_params"] or {}, f.get("kvdeck_same_free") or {}
        rows.append(
            f"| {f['budget_gib']} GiB | {f['kvdeck']['n_ctx']} ({f.get('reserve_mib')} MiB) | "
            f"{same.get('n_ctx')} | {ref.get('n_ctx')} | {ref.get('free_mib')} | {f['loads']} |"
        )
    path.write_text("\n".join([f"# Memory plan vs llama.cpp on a GPU ({res['date']})", ""] + rows) + "\n")


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
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "model": meta,
        "write_s": round(time.time() - t, 1),
        "devices": [d.__dict__ for d in devices],
        "gpu_note": note,
        "cases": [],
        "fit": [],
    }
    with RuntimeHost() as host:
        tel = Telemetry()
        res["child_gpu_mib_ready"] = child_gpu_mib(tel, host.pid)  # before any model
        res["footprint"] = []
        for case in CASES:
            s = PlanSettings(**case)
            a = analytic_plan(info, s, devices)
            t = time.time()
            e = exact_plan(info, s, devices)
            exact_s = time.time() - t
            m, err = load_measured(host, model, s, tel, res["footprint"])
            res["cases"].append(
                {
                    "settings": case,
                    "analytic": table(a),
                    "exact": table(e),
                    "measured": table(m) if m else None,
                    "error": err,
                    "exact_wall_s": round(exact_s, 2),
                    "flash_attn_exact": e.flash_attn_resolved,
                }
            )
            (out / f"gpu-memory-{res['date']}.json").write_text(json.dumps(res, indent=1))
        gpu = next((d for d in devices if d.kind == "gpu"), None)
        for budget in BUDGETS_GIB:
            r = fit(
                info,
                PlanSettings(n_ctx=0),
                devices,
                plan_fn=analytic_plan,
                budget_bytes=budget * GiB,
                margin_bytes=1024 * MiB,
            )
            ok, err = (False, "did not fit")
            if r.fits:
                m, err = load_measured(host, model, r.settings)
                ok = m is not None
            ref = (
                fit_params(args.fit_params, model, gpu.free_bytes // MiB, budget * 1024)
                if (args.fit_params and gpu)
                else None
            )
            same = None
            if ref and ref.get("free_mib"):  # KV Deck given exactly the memory llama.cpp saw
                seen = [
                    dataclasses.replace(d, free_bytes=ref["free_mib"] * MiB, reserved_bytes=0)
                    if d.kind == "gpu"
                    else d
                    for d in devices
                ]
                rs = fit(
                    info,
                    PlanSettings(n_ctx=0),
                    seen,
                    plan_fn=analytic_plan,
                    margin_bytes=ref["margin_mib"] * MiB,
                )
                same = {"n_ctx": rs.plan.n_ctx, "limited_by": rs.limited_by}
            res["fit"].append(
                {
                    "budget_gib": budget,
                    "kvdeck": {
                        "n_ctx": r.plan.n_ctx,
                        "n_gpu_layers": r.settings.n_gpu_layers,
                        "limited_by": r.limited_by,
                        "fits": r.fits,
                    },
                    "kvdeck_same_free": same,
                    "reserve_mib": gpu.reserved_bytes // MiB if gpu else None,
                    "loads": ok,
                    "load_error": err,
                    "llama_fit_params": ref,
                }
            )
            (out / f"gpu-memory-{res['date']}.json").write_text(json.dumps(res, indent=1))
    tel.close()
    write_md(res, out / f"gpu-memory-{res['date']}.md")
    print(json.dumps(res, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
