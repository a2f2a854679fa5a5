"""Draft/target compatibility: llama.cpp's rules, each with a verdict in words."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import kvdeck

pytestmark = pytest.mark.slow


def test_a_model_pairs_with_itself(smollm2_path):
    r = kvdeck("pair", str(smollm2_path), str(smollm2_path), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["compatible"] is True
    names = [c["name"] for c in data["checks"]]
    assert names == ["vocabulary type", "BOS token", "EOS token", "vocabulary size", "token texts", "memory"]
    assert all(c["ok"] and c["detail"] for c in data["checks"])


def test_different_tokenizers_are_refused_with_reasons(smollm2_path, gemma3_path):
    r = kvdeck("pair", str(smollm2_path), str(gemma3_path), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["compatible"] is False
    failed = {c["name"]: c["detail"] for c in data["checks"] if not c["ok"]}
    assert "vocabulary size" in failed and "262,144" in failed["vocabulary size"]
    assert "vocabulary type" in failed and "token texts" in failed


def test_memory_rule_uses_one_budget(smollm2_path):
    r = kvdeck("pair", str(smollm2_path), str(smollm2_path), "--budget-mib", "1100", "--json")
    data = json.loads(r.stdout)
    memory = next(c for c in data["checks"] if c["name"] == "memory")
    assert not memory["ok"] and "does not fit" in memory["detail"]
    assert data["compatible"] is False


def test_memory_rule_keeps_the_margins_fit_keeps(smollm2_path):
    """``pair`` takes ``fit``'s margins: RAM that must stay free is not RAM for the pair."""
    args = ("pair", str(smollm2_path), str(smollm2_path), "--json")
    for cpu_mib, fits in (("0", True), (str(1 << 20), False)):
        data = json.loads(kvdeck(*args, "--cpu-margin-mib", cpu_mib).stdout)
        memory = next(c for c in data["checks"] if c["name"] == "memory")
        assert memory["ok"] is fits, (cpu_mib, memory)
    bad = kvdeck(*args, "--margin-mib", "lots")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["error: --margin-mib 'lots' must be a whole number of MiB"]
