"""The CUDA0 compute buffer with layers on the CPU, re-evaluated offline against the H200 dry runs.

    python benchmarks/offload_replay_eval.py [--json benchmarks/results/gpu-memory-2026-12-04.json]
                                             [--worst N] [--markdown]

No GPU is needed: the committed results hold, for every case of the grids raw-main, raw-check
and raw-confirm (and the real loads), llama.cpp's measured `CUDA0 compute buffer` (`exact_mib`).
For every case with layers or the output on the CPU this rewrites the shape's sparse GGUF
locally (benchmarks/gpu_compute.py), runs KV Deck's analytic plan with one H200-sized CUDA
device and reads two figures from the plan: the final CUDA0 compute allocation, and the
ggml-alloc replay alone (engine.plan.compute_replay, named in the allocation's detail). It
prints their errors per shape × regime (ngl 0: every layer and the output on the CPU; some:
ngl 1..n_layer) and the worst cases. These are recorded measurements re-evaluated, not new ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_compute import SHAPES, settings_of, write_sparse_gguf  # noqa: E402
from benchmarks.gpu_compute_report import DEVICES  # noqa: E402
from engine.core.memory_types import MiB  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu-memory-2026-12-04.json"
_REPLAY = re.compile(r"ggml-alloc replay ([0-9.]+) MiB")


@dataclass(frozen=True)
class Case:
    grid: str
    shape: str
    settings: dict[str, Any]
    exact: float  # MiB, llama.cpp's CUDA0 compute buffer
    final: float  # MiB, the plan's CUDA0 compute allocation
    replay: float | None  # MiB, the replay alone (None: the plan did not replay)

    @property
    def regime(self) -> str:
        if not offloaded(self.settings, self.shape):
            return "full"
        return "ngl 0" if self.settings["ngl"] == 0 else "some"


def offloaded(settings: dict[str, Any], shape: str) -> bool:
    """Layers or the output on the CPU: 0 <= ngl <= n_layer (ngl = n_layer keeps the output on the CPU)."""
    return 0 <= settings["ngl"] <= SHAPES[shape]["n_layer"]


def evaluate(
    path: Path = RESULTS, model_dir: Path = Path("/tmp/kvdeck-shapes"), full: bool = False
) -> list[Case]:
    """Every offloaded case (dry runs and real loads) of the committed grids, planned now;
    with `full`, the full-offload cases too."""
    data = json.loads(path.read_text())
    model_dir.mkdir(parents=True, exist_ok=True)
    infos: dict[str, Any] = {}
    out = []
    for grid, g in data["grids"].items():
        for row in g["cases"] + g.get("real_loads", []):
            shape, s = row["shape"], row["settings"]
            if not offloaded(s, shape) and not full:
                continue
            if shape not in infos:
                p = model_dir / f"{shape}.gguf"
                if not p.exists():
                    write_sparse_gguf(p, shape)
                infos[shape] = inspect_gguf(p)
            plan = analytic_plan(infos[shape], settings_of(s), DEVICES)
            alloc = next(a for a in plan.allocations if a.component == "compute" and a.device == "CUDA0")
            m = _REPLAY.search(alloc.detail)
            out.append(
                Case(
                    grid,
                    shape,
                    s,
                    row["devices"]["CUDA0"]["exact_mib"],
                    alloc.bytes / MiB,
                    float(m.group(1)) if m else None,
                )
            )
    return out


def stats(errors: list[float], exact: list[float]) -> dict[str, float]:
    within = sum(1 for e in errors if abs(e) <= 1.0)
    pct = [e / x * 100 for e, x in zip(errors, exact, strict=True)]
    return {
        "n": len(errors),
        "within": within,
        "under": min(errors),
        "over": max(errors),
        "mean_pct": sum(pct) / len(pct),
        "worst_pct": max(pct),
        "under_1": sum(1 for e in errors if e < -1.0),
    }


_WHERE = {"ngl 0": "all, output too (ngl 0)", "some": "some (ngl 1..n)", "full": "none (full offload)"}


def table(cases: list[Case]) -> list[str]:
    """Markdown rows: per shape × regime, the replay alone and the final estimate."""
    out = [
        "| shape | layers on the CPU | cases | replay: within 1 MiB · most under / most over MiB "
        "· under >1 MiB | final: within · most under / most over MiB · mean / worst % over |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(c.shape, c.regime) for c in cases})
    for shape, reg in keys:
        cs = [c for c in cases if c.shape == shape and c.regime == reg]
        ex = [c.exact for c in cs]
        f = stats([c.final - c.exact for c in cs], ex)
        rc = [c for c in cs if c.replay is not None]
        r = (
            stats([c.replay - c.exact for c in rc if c.replay is not None], [c.exact for c in rc])
            if rc
            else None
        )
        rtxt = (
            f"{r['within']}/{r['n']} · {r['under']:+.2f} / {r['over']:+.2f} · {r['under_1']}"
            if r
            else "no replay"
        )
        out.append(
            f"| {shape} | {_WHERE[reg]} | {len(cs)} | "
            f"{rtxt} | {f['within']}/{f['n']} · {f['under']:+.2f} / {f['over']:+.2f} · "
            f"{f['mean_pct']:.1f} / {f['worst_pct']:.1f} % |"
        )
    return out


def save(cases: list[Case], path: Path) -> None:
    path.write_text(json.dumps([dataclasses.asdict(c) for c in cases], indent=0))


def load(path: Path) -> list[Case]:
    return [Case(**c) for c in json.loads(path.read_text())]


def _cell(cs: list[Case], replay: bool) -> str:
    pairs = [(c.replay if replay else c.final, c.exact) for c in cs]
    got = [(a, x) for a, x in pairs if a is not None]
    if not got:
        return "no replay"
    st = stats([a - x for a, x in got], [x for _a, x in got])
    return (
        f"{st['within']}/{st['n']} · {st['under']:+.2f} / {st['over']:+.2f} · "
        f"{st['mean_pct']:+.1f} / {st['worst_pct']:+.1f} %"
    )


def compare(before: list[Case], after: list[Case]) -> list[str]:
    """Markdown: per shape × regime, the replay alone and the plan, before and after."""
    out = [
        "| shape | layers on the CPU | cases | before: replay alone | before: plan | after: replay alone "
        "| after: plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, reg in sorted({(c.shape, c.regime) for c in after}):
        b = [c for c in before if c.shape == shape and c.regime == reg]
        a = [c for c in after if c.shape == shape and c.regime == reg]
        where = _WHERE[reg]
        out.append(
            f"| {shape} | {where} | {len(a)} | {_cell(b, True)} | {_cell(b, False)} | "
            f"{_cell(a, True)} | {_cell(a, False)} |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--worst", type=int, default=15)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/kvdeck-shapes"))
    ap.add_argument("--save", type=Path, help="write the cases (to compare another commit with)")
    ap.add_argument("--before", type=Path, help="cases saved at another commit: print both")
    ap.add_argument("--full", action="store_true", help="the full-offload cases too")
    a = ap.parse_args()
    cases = evaluate(a.json, a.model_dir, a.full)
    if a.save:
        save(cases, a.save)
    if a.before:
        print("\n".join(compare(load(a.before), cases)) + "\n")
    print("\n".join(table(cases)))
    rc = [c for c in cases if c.replay is not None]
    print(
        f"\n{len(cases)} cases; replay within 1 MiB: "
        f"{sum(1 for c in rc if abs(c.replay - c.exact) <= 1.0)} of {len(rc)}; "  # type: ignore[operator]
        f"final under >1 MiB: {sum(1 for c in cases if c.final - c.exact < -1.0)}"
    )
    print("\nworst replay errors:")
    for c in sorted(rc, key=lambda c: -abs(c.replay - c.exact))[: a.worst]:  # type: ignore[operator]
        print(f"  {c.replay - c.exact:+9.2f} MiB  {c.shape:18} {c.grid:11} {c.settings}  exact {c.exact:.2f}")  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    sys.exit(main())
