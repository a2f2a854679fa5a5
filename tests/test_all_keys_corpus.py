"""Specification: files that carry every known key plan exactly like the plain file (issue 18).

Some GGUF writers put every key any architecture reads into every file, zero where the
architecture does not use it (`ssm.* = 0` on a llama, `kv_lora_rank = 0`, indexer keys, …).
llama.cpp reads, per architecture, only the keys its loader asks for (engine/gguf/arch_table.py,
generated from the loader source) and ignores the rest, so for every synthetic family the
"all keys" file must give the identical analytic plan and the identical llama.cpp dry run. Keys
the arch does read are left as the plain file has them: giving them a zero would be a different
model. Odd-but-legal values of keys the arch *does* read (`sliding_window = 0`, an empty
per-layer array, `nextn_predict_layers = 0`) must give the same outcome as llama.cpp: the same
plan when it loads the file, a refusal when it refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ModelFileError
from engine.core.memory_types import MiB
from engine.core.memory_types import PlanSettings as S
from engine.gguf.inspect import GGUFInfo, inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.kv_sizes import kv_caches
from engine.plan.rules import check_settings
from tests.helpers.all_keys import zero_keys
from tests.helpers.gguf_factory import FAMILIES, write_family
from tests.helpers.llama_dry_run import DryRun, dry_run

SETTINGS = [S(n_ctx=512, flash_attn="on"), S(n_ctx=1024, n_seq_max=2, flash_attn="off", swa_full=False)]


class Empty(tuple):
    """An empty uint32 array: gguf.GGUFWriter refuses to write one, tests/gguf_raw does."""


def write_odd(name: str, directory: Path, changes: dict[str, Any]) -> Path:
    """FAMILIES[name] with `changes`; empty arrays are patched in through gguf_raw."""
    from tests.helpers.gguf_raw import T_U32, base, kv_array

    arch = FAMILIES[name].arch
    empty = [k for k, v in changes.items() if isinstance(v, Empty)]
    path = write_family(name, directory, **{k: v for k, v in changes.items() if k not in empty})
    if empty:
        spec = base(name)
        for key in empty:
            spec.set(kv_array(f"{arch}.{key}", T_U32, []))
        path.write_bytes(spec.to_bytes())
    return path


def _memory(run: DryRun) -> Any:
    """What a dry run allocated, comparable between two files (None when refused)."""
    if not run.ok:
        return None
    log = run.parser
    return (
        [(c.kind, c.cells, c.layers, c.parts) for c in log.kv_caches],
        [(c.kind, c.cells, c.layers, c.parts) for c in log.recurrent + log.states],
        sorted(log.buffers.items()),
    )


def _ours(path: Path, settings: S) -> tuple[GGUFInfo | None, bool]:
    """(info, loads?) as the analytic side sees the file: inspect, then the settings rules."""
    try:
        info = inspect_gguf(path)
    except ModelFileError:
        return None, False
    return info, not [p for p in check_settings(info, settings, 0) if p.severity == "error"]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path, list[DryRun], list[DryRun]]]:
    """name -> (plain, all keys, plain dry runs, all-keys dry runs), all runs in one child."""
    plain_dir, full_dir = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("allkeys")
    files = {n: (write_family(n, plain_dir), write_family(n, full_dir, **zero_keys(n))) for n in FAMILIES}
    jobs = [(str(p), s) for pair in files.values() for p in pair for s in SETTINGS]
    runs = iter(dry_run(jobs, timeout=300))
    k = len(SETTINGS)
    return {
        n: (p, f, [next(runs) for _ in range(k)], [next(runs) for _ in range(k)])
        for n, (p, f) in files.items()
    }


@pytest.mark.parametrize("name", list(FAMILIES))
def test_all_keys_file_plans_like_the_plain_file(name: str, corpus: dict) -> None:
    plain_path, full_path, plain_runs, full_runs = corpus[name]
    assert len(zero_keys(name)) > 50  # the generated key list really is "everything"
    plain, full = inspect_gguf(plain_path), inspect_gguf(full_path)
    assert any(r.ok for r in full_runs), [r.error for r in full_runs]
    for settings, prun, frun in zip(SETTINGS, plain_runs, full_runs):
        assert _memory(frun) == _memory(prun), (settings, frun.error, prun.error)
        info, ok = _ours(full_path, settings)
        assert ok == frun.ok, (settings, frun.error)
        if not ok:
            continue
        mine, theirs = analytic_plan(full, settings, []), analytic_plan(plain, settings, [])
        assert mine.allocations == theirs.allocations and mine.notes == theirs.notes
        assert (mine.n_ctx, mine.kv_cells, mine.kv_cells_swa) == (
            theirs.n_ctx,
            theirs.kv_cells,
            theirs.kv_cells_swa,
        )
        _check_against_log(full, settings, frun)


def _check_against_log(info: GGUFInfo, settings: S, run: DryRun) -> None:
    """The analytic KV caches and recurrent state equal llama.cpp's `size =` lines."""
    plan = analytic_plan(info, settings, [])
    log = run.parser
    assert (plan.n_ctx, plan.n_ctx_seq) == (log.param("n_ctx"), log.param("n_ctx_seq"))
    caches, _swa = kv_caches(info, settings, v_trans=settings.flash_attn == "off")
    logged = [c for c in log.kv_caches if c.layers]
    assert len([c for c in caches if c.layers]) == len(logged) or info.sparse, (caches, logged)
    if not info.sparse:
        for mine, theirs in zip([c for c in caches if c.layers], logged):
            assert theirs.parts["K"] == (mine.type_k, f"{mine.k_bytes / MiB:.2f}")
            assert theirs.parts["V"] == (mine.type_v, f"{mine.v_bytes / MiB:.2f}")
    rs = sum(v for (c, _b), v in log.buffers.items() if c == "recurrent")
    assert abs(plan.bytes_for(component="recurrent") / MiB - rs) < 0.011 or info.sparse


# (family, key changes, why): values llama.cpp accepts or refuses, each compared with it.
ODD = [
    ("llama", {"attention.sliding_window": 0}, "llama does not read it"),
    ("gemma3", {"attention.sliding_window": 0}, "gemma3: SWA only when the window is > 0"),
    ("gemma2", {"attention.sliding_window": 0}, "gemma2 reads it (default 4096)"),
    ("llama", {"nextn_predict_layers": 0}, "every arch reads it; 0 is the default"),
    ("deepseek2", {"nextn_predict_layers": 0}, "the same on an MLA arch"),
    ("llama", {"attention.head_count_kv": Empty()}, "per-layer array of the wrong length"),
    ("llama", {"feed_forward_length": Empty()}, "per-layer array of the wrong length"),
    ("qwen3moe", {"expert_used_count": Empty()}, "per-layer array of the wrong length"),
    ("llama", {"attention.sliding_window_pattern": Empty()}, "llama does not read it"),
    ("gemma3", {"attention.sliding_window_pattern": Empty()}, "gemma3 without a window"),
]


def test_odd_but_legal_values_have_llama_cpps_outcome(tmp_path: Path) -> None:
    cases = []
    for i, (name, changes, why) in enumerate(ODD):
        (tmp_path / str(i)).mkdir()
        cases.append((name, write_odd(name, tmp_path / str(i), changes), why))
    (tmp_path / "plain").mkdir()
    plains = {n: write_family(n, tmp_path / "plain") for n in {c[0] for c in cases}}
    jobs = [(str(p), s) for _n, p, _w in cases for s in SETTINGS]
    jobs += [(str(p), s) for p in plains.values() for s in SETTINGS]
    runs = iter(dry_run(jobs, timeout=300))
    odd_runs = [[next(runs) for _ in SETTINGS] for _ in cases]
    plain_runs = {n: [next(runs) for _ in SETTINGS] for n in plains}
    for (name, path, why), case_runs in zip(cases, odd_runs):
        for settings, run, prun in zip(SETTINGS, case_runs, plain_runs[name]):
            info, ok = _ours(path, settings)
            assert ok == run.ok, (name, why, settings, run.error)
            if ok:
                assert info is not None
                _check_against_log(info, settings, run)
                same_as_plain = _memory(run) == _memory(prun)
                plain_plan = analytic_plan(inspect_gguf(plains[name]), settings, [])
                assert same_as_plain == (
                    analytic_plan(info, settings, []).allocations == plain_plan.allocations
                ), (name, why)
