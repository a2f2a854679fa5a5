"""The committed architecture table is what tools/gen_arch_table.py derives from llama.cpp's
source (0c1e570), and it agrees with facts checked by hand in the source.

`make test` extracts the source into .venv/src (`make llama-src`); without it the regeneration
check is skipped, with the reason, and the hand-checked facts still run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from engine.gguf import arch_table
from engine.gguf.arch_keys import all_arch_keys, known_arch, reads

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_arch_table", ROOT / "tools" / "gen_arch_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_arch_table"] = module
    spec.loader.exec_module(module)
    return module


def test_regenerating_from_the_source_gives_the_committed_table() -> None:
    gen = _generator()
    src = gen.find_source([])
    if src is None:
        pytest.skip("llama.cpp source not present: `make llama-src` extracts it into .venv/src")
    committed = (ROOT / "engine" / "gguf" / "arch_table.py").read_text(encoding="utf-8")
    assert gen.render(gen.parse(src)) == committed, "run `make arch-table` and commit the result"


def test_hand_checked_facts() -> None:
    # mistral4 and llama-embed have no load_arch_hparams of their own (src/models/models.h)
    assert arch_table.ARCH_LOADER["mistral4"] == "deepseek2"
    assert arch_table.ARCH_LOADER["llama-embed"] == "llama"
    # gptj is in LLM_ARCH_NAMES, but llama_model_mapping throws "unsupported model architecture"
    assert "gptj" in arch_table.UNMAPPED and not known_arch("gptj")
    # common keys (llama_model_base::load_hparams): every arch reads nextn_predict_layers
    assert "llama.nextn_predict_layers" in reads("llama")
    assert reads("llama")["llama.block_count"][1] is True  # required
    # what a plain llama does not read
    for key in (
        "ssm.conv_kernel",
        "attention.sliding_window",
        "attention.kv_lora_rank",
        "attention.indexer.head_count",
        "full_attention_interval",
    ):
        assert f"llama.{key}" not in reads("llama")
    # gemma2: window optional with default 4096, pattern via load_swa_pattern (array or scalar)
    assert reads("gemma2")["gemma2.attention.sliding_window"] == ("get_key", False, False, "4096")
    assert reads("gemma2")["gemma2.attention.sliding_window_pattern"][0] == "get_arr+get_key"
    # deepseek2: kv_lora_rank required, the _mla head sizes optional, q_lora_rank conditional
    ds = reads("mistral4")
    assert ds["mistral4.attention.kv_lora_rank"][1] and not ds["mistral4.attention.key_length_mla"][1]
    assert ds["mistral4.attention.q_lora_rank"][2]
    # qwen4exp's file-local helper qwen4exp_require_arr_len reads ple.* arrays' lengths
    assert reads("qwen4exp")["qwen4exp.ssm.conv_kernel"][1]
    assert len(arch_table.ARCH_LOADER) > 140 and len(all_arch_keys()) > 150


def test_the_analytic_plan_says_which_architectures_it_does_not_know(tmp_path: Path) -> None:
    import dataclasses

    from engine.core.memory_types import PlanSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.analytic import analytic_plan
    from tests.helpers.gguf_factory import write_llama

    llama = inspect_gguf(write_llama(tmp_path / "m.gguf"))
    assert not any("does not know" in n for n in analytic_plan(llama, PlanSettings(), []).notes)
    for arch in ("t5", "wavtokenizer-dec", "gptj", "made-up"):
        plan = analytic_plan(dataclasses.replace(llama, architecture=arch), PlanSettings(), [])
        assert any(f"does not know architecture {arch!r}" in n and "--exact" in n for n in plan.notes), (
            plan.notes
        )
