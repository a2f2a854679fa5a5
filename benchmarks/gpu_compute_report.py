"""Analytic compute buffers vs llama.cpp's dry run (and real loads) for gpu_compute.py's grid.

    python benchmarks/gpu_compute_report.py RAW.json [RAW2.json ...] --out results.json

Rewrites each shape's sparse GGUF locally (no data, seconds), runs KV Deck's analytic plan
for every case with one H200-sized CUDA device, and compares the compute allocation per
device with the exact numbers: CUDA0 with `CUDA0 compute buffer`, CPU with `CUDA_Host` (+
`CPU`). Prints the worst error per shape × regime and writes every case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_compute import SHAPES, settings_of, write_sparse_gguf  # noqa: E402
from engine.core.memory_types import Device, GiB, MiB  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402

DEVICES = [Device("CPU", "cpu", 128 * GiB, 120 * GiB), Device("CUDA0", "gpu", 143771 * MiB, 143000 * MiB)]


def regime(s: dict[str, Any], n_layer: int) -> str:
    g = "full" if s["ngl"] < 0 or s["ngl"] > n_layer else ("ngl0" if s["ngl"] == 0 else "partial")
    return f"{g}/{s['tk']}/{'fa' if s['fa'] != 'off' else 'nofa'}"


def compare(raw: dict[str, Any], mdir: Path, which: str = "cases") -> list[dict[str, Any]]:
    infos = {}
    rows = []
    for c in raw[which]:
        n = c["shape"]
        if n not in infos:
            p = mdir / f"{n}.gguf"
            if not p.exists():
                write_sparse_gguf(p, n)
            infos[n] = inspect_gguf(p)
        s = settings_of(c["settings"])
        plan = analytic_plan(infos[n], s, DEVICES)
        exact = {
            "CUDA0": c["compute"].get("CUDA0", 0.0),
            "CPU": c["compute"].get("CUDA_Host", 0.0) + c["compute"].get("CPU", 0.0),
        }
        row = {
            "shape": n,
            "settings": c["settings"],
            "regime": regime(c["settings"], SHAPES[n]["n_layer"]),
            "devices": {},
        }
        for dev, e in exact.items():
            a = plan.bytes_for(dev, "compute") / MiB
            row["devices"][dev] = {
                "analytic_mib": round(a, 2),
                "exact_mib": e,
                "error_mib": round(a - e, 2),
                "error_pct": round((a - e) / e * 100, 2) if e else None,
            }
        row["notes"] = [x for x in plan.notes if x.startswith("compute")]
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    worst: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    for r in rows:
        for dev, d in r["devices"].items():
            k = (r["shape"], r["regime"], dev)
            lo, hi, pct = worst.get(k, (1e9, -1e9, 0.0))
            err = d["error_mib"]
            worst[k] = (min(lo, err), max(hi, err), max(pct, abs(d["error_pct"] or 0.0)))
    out = [
        "| shape | regime | device | most under MiB | most over MiB | worst % |",
        "|---|---|---|---|---|---|",
    ]
    for (shape, reg, dev), (lo, hi, pct) in sorted(worst.items()):
        out.append(f"| {shape} | {reg} | {dev} | {lo:+.2f} | {hi:+.2f} | {pct:.1f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("--model-dir", default="/tmp/kvdeck-shapes")
    a = ap.parse_args()
    mdir = Path(a.model_dir)
    mdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"grids": {}}
    all_rows = []
    for path in a.raw:
        raw = json.loads(Path(path).read_text())
        name = Path(path).stem
        rows = compare(raw, mdir)
        real = compare(raw, mdir, "real") if raw.get("real") else []
        res["grids"][name] = {
            "date": raw.get("date"),
            "shapes": raw.get("shapes"),
            "cases": rows,
            "real_loads": real,
        }
        all_rows += rows + real
    table = summary(all_rows)
    res["summary"] = table
    under = [r for r in all_rows for d in r["devices"].values() if d["error_mib"] < -1.0]
    res["under_by_more_than_1_mib"] = len(under)
    print("\n".join(table))
    print("cases", len(all_rows), "under >1 MiB:", len(under))
    for r in under[:40]:
        print("  UNDER", r["shape"], r["settings"], {k: v["error_mib"] for k, v in r["devices"].items()})
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
