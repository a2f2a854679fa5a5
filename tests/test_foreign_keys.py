"""Specification: keys an architecture does not read change nothing, as in llama.cpp.

Some GGUF writers put every known key into every file, most of them zero. llama.cpp's loader
reads, per architecture, only the keys that architecture asks for, and `llama_hparams::is_mla()`
asks for both MLA head sizes to be non-zero. A llama, qwen3moe or gemma3 file carrying zeroed (or
even non-zero) MLA keys is therefore a plain GQA model: full K and V caches, K and V types free.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.kv_sizes import kv_caches
from engine.plan.rules import check_settings
from tests.helpers.gguf_factory import write_family
from tests.helpers.llama_dry_run import dry_run

ZEROED_MLA = {
    "attention.key_length_mla": 0,
    "attention.value_length_mla": 0,
    "attention.kv_lora_rank": 0,
    "attention.q_lora_rank": 0,
}
# A non-MLA arch never reads these, whatever their value.
FOREIGN_MLA = {
    "attention.key_length_mla": 192,
    "attention.value_length_mla": 128,
    "attention.kv_lora_rank": 64,
}
SETTINGS = [
    PlanSettings(n_ctx=512, flash_attn="on"),
    PlanSettings(n_ctx=1024, n_seq_max=2, flash_attn="on", type_k="f16", type_v="q4_0"),
    PlanSettings(n_ctx=512, flash_attn="off", type_k="q8_0"),
]


@pytest.mark.parametrize("family", ["llama", "qwen3moe", "gemma3"])
@pytest.mark.parametrize("extra", [ZEROED_MLA, FOREIGN_MLA], ids=["zeroed", "foreign"])
def test_mla_keys_of_other_archs_are_ignored(family: str, extra: dict, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    plain = inspect_gguf(write_family(family, tmp_path / "plain"))
    path = write_family(family, tmp_path, **extra)
    info = inspect_gguf(path)
    assert info.mla is None
    runs = dry_run([(str(path), s) for s in SETTINGS])
    for settings, run in zip(SETTINGS, runs):
        assert not [p for p in check_settings(info, settings, 0) if p.severity == "error"]
        assert run.ok, run.error
        plan = analytic_plan(info, settings, [])
        assert plan.bytes_for(component="kv") == analytic_plan(plain, settings, []).bytes_for(component="kv")
        caches, _swa = kv_caches(info, settings, v_trans=settings.flash_attn == "off")
        logged = [c for c in run.parser.kv_caches if c.layers]
        assert len(caches) == len(logged)
        for mine, theirs in zip(caches, logged):
            assert theirs.parts["K"] == (mine.type_k, f"{mine.k_bytes / MiB:.2f}")
            assert theirs.parts["V"] == (mine.type_v, f"{mine.v_bytes / MiB:.2f}")


def test_zeroed_mla_keys_make_an_mla_arch_plain(tmp_path: Path) -> None:
    """deepseek2 with key/value_length_mla = 0 is not MLA either (is_mla needs both > 0)."""
    info = inspect_gguf(
        write_family(
            "deepseek2", tmp_path, **{"attention.key_length_mla": 0, "attention.value_length_mla": 0}
        )
    )
    assert info.mla is None
