"""Self-drafting (issue 19): MTP heads and the Gemma 4 assistant, on tiny random-weight models in the
real child. Random weights make greedy identity meaningful and acceptance meaningless (a random head
guesses at chance), so the tests check identity, the per-position counts, the shared context's size
and the refusals, never acceptance itself.
"""

from __future__ import annotations

import pytest

from engine import protocol as P
from engine.core.errors import InvalidSettings, NotReady
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.gguf.inspect import inspect_gguf
from engine.plan.assistant_rules import assistant_checks, embedding_length_out, outgrows
from tests.helpers import mtp_models as mm
from tests.helpers.runtime_host import running_host

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
PROMPTS = [" ".join(f"w{(p * 7 + i) % 61}" for i in range(3 + p)) for p in range(8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtp")
    return {
        "hyv3": mm.write_hyv3(d / "hyv3.gguf"),
        "qwen35": mm.write_qwen35(d / "qwen35.gguf"),
        "plain": mm.write_hyv3(d / "plain.gguf", n_nextn=0),
        "g4": mm.write_gemma4_target(d / "g4.gguf"),
        "g4a": mm.write_gemma4_assistant(d / "g4a.gguf"),
        "g4a_heads": mm.write_gemma4_assistant(d / "g4a-heads.gguf", head_full=64),
        "g4a_embd": mm.write_gemma4_assistant(d / "g4a-embd.gguf", embd_out=96),
    }


def _settings(**kw) -> PlanSettings:
    return PlanSettings(n_ctx=kw.pop("n_ctx", 512), n_batch=64, n_ubatch=64, **kw)


def _identity(host, mode: str, n_prompts: int, n_tokens: int) -> tuple[int, list[int], list[int]]:
    same, drafted, accepted = 0, [], []
    for prompt in PROMPTS[:n_prompts]:
        plain = host.generate(prompt, max_tokens=n_tokens, sampling=GREEDY)
        fast = host.generate(prompt, max_tokens=n_tokens, sampling=GREEDY, draft=mode, draft_max=4)
        same += plain.tokens == fast.tokens
        assert fast.n_drafted == sum(fast.drafted_at) and fast.n_accepted == sum(fast.accepted_at)
        drafted = [a + b for a, b in zip(drafted or [0] * len(fast.drafted_at), fast.drafted_at)]
        accepted = [a + b for a, b in zip(accepted or [0] * len(fast.accepted_at), fast.accepted_at)]
    return same, drafted, accepted


def test_chained_mtp_heads_give_plain_greedy_output(models):
    """hy_v3 with 3 chained heads: 8 prompts x 160 tokens, token for token; k <= 3 heads."""
    with running_host(P.LoadParams(str(models["hyv3"]), settings=_settings(mtp=True))) as (host, loaded):
        assert loaded.mtp == "ready" and loaded.n_layer_nextn == 3
        assert any("filtered" in ln or "KV" in ln for ln in loaded.memory_log)
        same, drafted, accepted = _identity(host, "mtp", 8, 160)
    assert same == 8
    assert len(drafted) == 3 and drafted[0] > 0  # one position per head
    print("\nhy_v3 acceptance by position", drafted, accepted)


def test_single_head_on_a_hybrid_target_rolls_back_with_snapshots(models):
    """qwen35 (delta-net + attention): drafting needs n_rs_seq >= 2, and k <= n_rs_seq - 1."""
    with running_host(P.LoadParams(str(models["qwen35"]), settings=_settings(mtp=True))) as (host, loaded):
        assert loaded.mtp == "ready"
        with pytest.raises(InvalidSettings, match="n_rs_seq"):
            host.generate(PROMPTS[0], max_tokens=8, sampling=GREEDY, draft="mtp")
    with running_host(P.LoadParams(str(models["qwen35"]), settings=_settings(mtp=True, n_rs_seq=4))) as (
        host,
        _l,
    ):
        same, drafted, _acc = _identity(host, "mtp", 2, 160)
    assert same == 2 and len(drafted) == 3


def test_assistant_shares_the_targets_kv_and_follows_its_size(models):
    """The seed scenario: a target fitted to 256 tokens with 2 sequences, an assistant whose own
    default context is 131072: it loads with the target's size, drafts, and nothing aborts."""
    settings = _settings(n_ctx=256, n_seq_max=2)
    with running_host(P.LoadParams(str(models["g4"]), settings=settings)) as (host, loaded):
        d = host.load_draft(str(models["g4a"]))
        assert d.kind == "assistant" and d.shares_target_kv and d.n_ctx == loaded.n_ctx <= 512
        assert d.n_ctx_train == 131072 and all(c["ok"] for c in d.checks)
        assert not any("KV buffer size" in ln for ln in d.memory_log)  # it owns no KV
        same, drafted, _acc = _identity(host, "model", 4, 100)
        assert same == 4 and drafted[0] > 0


@pytest.mark.parametrize("bad,words", [("g4a_heads", "head sizes"), ("g4a_embd", "hidden size")])
def test_a_bad_assistant_is_refused_in_one_line_and_chat_goes_on(models, bad, words):
    with running_host(P.LoadParams(str(models["g4"]), settings=_settings())) as (host, _loaded):
        with pytest.raises(InvalidSettings) as err:
            host.load_draft(str(models[bad]))
        assert words in str(err.value) and "\n" not in str(err.value)
        assert host.generate(PROMPTS[1], max_tokens=6, sampling=GREEDY).tokens


def test_assistant_for_another_target_and_mtp_without_heads(models):
    with running_host(P.LoadParams(str(models["plain"]), settings=_settings(mtp=True))) as (host, loaded):
        assert loaded.n_layer_nextn == 0 and "no MTP (nextn) layers" in loaded.mtp
        with pytest.raises((InvalidSettings, NotReady), match="cannot draft for itself"):
            host.generate(PROMPTS[0], max_tokens=4, sampling=GREEDY, draft="mtp")
        with pytest.raises(InvalidSettings, match="architecture"):
            host.load_draft(str(models["g4a"]))
        assert host.generate(PROMPTS[0], max_tokens=6, sampling=GREEDY).tokens  # chat keeps working


def test_pair_rules_and_the_size_preflight_in_words(models):
    t, a = inspect_gguf(models["g4"]), inspect_gguf(models["g4a"])
    assert all(c.ok for c in assistant_checks(t, a, embedding_length_out(str(models["g4a"]))))
    bad = {c.name: c for c in assistant_checks(inspect_gguf(models["hyv3"]), a, 64)}
    assert not bad["architecture"].ok and not bad["SWA layout"].ok
    why = outgrows(
        {"context": 256, "sequences": 2, "batch": 64}, {"context": 131072, "sequences": 2, "batch": 64}
    )
    assert why.startswith("the drafting context would not follow") and "131,072" in why and "\n" not in why
    assert outgrows({"context": 256}, {"context": 256}) == ""


def test_an_assistant_loaded_mid_conversation_keeps_the_reply_the_same(models):
    """llama.cpp's shared cell bookkeeping is reset when an assistant's context is created
    (llama-kv-cache.cpp: the sharing cache resizes the source's cells), so the target's cached
    prefix must be forgotten then: the same prompt after loading gives the same greedy reply."""
    prompt = PROMPTS[5]
    with running_host(P.LoadParams(str(models["g4"]), settings=_settings(n_ctx=512))) as (host, _l):
        before = host.generate(prompt, max_tokens=24, sampling=GREEDY).tokens
        host.load_draft(str(models["g4a"]))
        after = host.generate(prompt, max_tokens=24, sampling=GREEDY)
        drafted = host.generate(prompt, max_tokens=24, sampling=GREEDY, draft="model", draft_max=3)
    assert after.tokens == before and drafted.tokens == before
