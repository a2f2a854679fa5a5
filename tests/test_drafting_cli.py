"""``kvdeck bench --mtp`` / ``--draft ASSISTANT`` and ``kvdeck pair TARGET ASSISTANT`` (issue 19), on
tiny random-weight models: the drafted decode is measured beside the plain one, acceptance per draft
position is reported, and a drafter that cannot draft is one line while the plain figures still come.
Random weights make acceptance meaningless, so only identity and the report's shape are checked.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import mtp_models as mm
from tests.helpers.cli import kvdeck

BENCH = ("--pp", "16", "--tg", "24", "--reps", "1", "--batch", "64", "--ubatch", "64", "--json")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtp-cli")
    return {
        "hyv3": str(mm.write_hyv3(d / "hyv3.gguf")),
        "plain": str(mm.write_hyv3(d / "plain.gguf", n_nextn=0)),
        "g4": str(mm.write_gemma4_target(d / "g4.gguf")),
        "g4a": str(mm.write_gemma4_assistant(d / "g4a.gguf")),
        "g4a_heads": str(mm.write_gemma4_assistant(d / "g4a-heads.gguf", head_full=64)),
    }


@pytest.mark.parametrize(
    ("target", "extra", "mode", "positions"),
    [
        ("hyv3", ("--mtp", "--draft-max", "3"), "mtp", 3),
        ("g4", ("--draft", "{g4a}", "--draft-max", "2"), "model", 2),
    ],
)
def test_bench_measures_self_drafting_beside_plain_decoding(models, target, extra, mode, positions):
    r = kvdeck("bench", models[target], *BENCH, *[e.format(**models) for e in extra])
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    spec = data["speculative"]
    assert spec["mode"] == mode and spec["identical"]
    assert spec["draft_n_ctx"] == data["settings"]["n_ctx"]  # the drafter follows the target's size
    assert len(spec["acceptance_by_position"]) <= positions and spec["drafted_by_position"][0] > 0
    assert data["speedup"] is not None and data["plain_tg_tokens_per_s"] > 0


@pytest.mark.parametrize(
    ("target", "extra", "words"),
    [
        ("plain", ("--mtp",), "has no MTP (nextn) layers"),
        ("hyv3", ("--draft", "{g4a}"), "cannot draft for"),
        ("g4", ("--draft", "{g4a_heads}"), "head sizes"),
    ],
)
def test_bench_with_a_drafter_that_cannot_draft_is_one_line_and_still_measures(models, target, extra, words):
    r = kvdeck("bench", models[target], *BENCH, *[e.format(**models) for e in extra])
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    assert "speculative" not in data and data["tg"]["tokens_per_s"] > 0


def test_pair_states_the_assistant_rules_in_words(models):
    ok = kvdeck("pair", models["g4"], models["g4a"], "--ctx", "2048")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("compatible (a Gemma 4 assistant")
    for rule in ("architecture", "hidden size", "vocabulary", "SWA layout", "head sizes", "memory"):
        assert f"ok  {rule}:" in ok.stdout
    bad = json.loads(kvdeck("pair", models["hyv3"], models["g4a"], "--json").stdout)
    assert bad["kind"] == "assistant" and not bad["compatible"]
    failed = {c["name"]: c["detail"] for c in bad["checks"] if not c["ok"]}
    assert "drafts for Gemma 4 and the target is hy_v3" in failed["architecture"]
