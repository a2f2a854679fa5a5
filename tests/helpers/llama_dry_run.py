"""What llama.cpp (CPU build) would allocate, parsed: `tools.llama_dry_run`'s child, read with
`engine.plan.measured` into a plan the tests compare with the analytic one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.llama_dry_run import run_jobs

#: The DEBUG lines that carry sizes (everything at INFO and above is kept anyway).
KEEP_DEBUG = ("dev = ", "compute buffer size is", "reserving a graph", "worst-case")


@dataclass
class DryRun:
    """One job's outcome: the parsed plan (None when llama.cpp refused) and the raw log."""

    ok: bool
    lines: list[str]
    error: str = ""
    plan: Any = None
    parser: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def dry_run(jobs: list[tuple[str, Any]], real: bool = False, timeout: float = 120.0) -> list[DryRun]:
    """Run [(gguf path, PlanSettings)] in as few child processes as possible.

    A job that aborts the child is reported with the child's stderr tail; the remaining jobs
    continue in a fresh child."""
    from engine.plan.measured import MemoryLogParser

    raw = run_jobs(
        [{"path": str(p), "settings": s.to_dict(), "real": real} for p, s in jobs],
        KEEP_DEBUG,
        env={"OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    results: list[DryRun] = []
    for (_path, settings), out in zip(jobs, raw):
        if "died" in out:
            err = out["died"].strip().splitlines()
            why = [x for x in err if "GGML_ASSERT" in x or "error" in x.lower()] or err
            extra = {"aborted": True, "returncode": out["returncode"]}
            results.append(
                DryRun(False, [], " | ".join(why[-2:]) or f"exit {out['returncode']}", extra=extra)
            )
            continue
        lines = out["load_lines"] + out["lines"]
        parser = MemoryLogParser()
        for line in lines:
            parser.feed(line)
        error = "" if out["ok"] else (parser.errors[-1] if parser.errors else "refused")
        plan = parser.result(settings, "exact") if out["ok"] else None
        results.append(DryRun(out["ok"], lines, error, plan, parser))
    return results
