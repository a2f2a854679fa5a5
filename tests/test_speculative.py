"""Speculative decoding: the output is the target's, only faster (or, with a bad draft, slower).

The first tests are the arithmetic (engine.child.spec_sampling, engine.child.ngram) on synthetic arrays;
the rest run real models in a child process: SmolLM2 drafting for itself (acceptance ~100 %),
n-gram lookup, the seed scenario of the issue (a draft whose training context is larger than
the target's fitted one), refusals with reasons, and cancel mid-speculation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import protocol as P
from engine.chat.conversation import conversation_prompt
from engine.chat.template import ChatMessage
from engine.child.ngram import NgramIndex
from engine.child.spec_sampling import accept_or_resample, final_distribution, greedy_token
from engine.core.errors import InvalidSettings, NotReady
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from tests.helpers.cli import kvdeck
from tests.helpers.runtime_host import cancelled_mid_reply, running_host

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
PROMPTS = ["Write a short poem about the sea.", "What are the three primary colours? Explain briefly."]


# ----------------------------------------------------------------------------- the arithmetic
def _chi_square(counts: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    expected = counts.sum() * p
    live = expected > 0
    assert counts[~live].sum() == 0, "a token with target probability 0 came out"
    return float((((counts - expected) ** 2)[live] / expected[live]).sum()), int(live.sum()) - 1


# chi-square critical values at p = 0.0001 for 1..7 degrees of freedom
_CRITICAL = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74, 6: 27.86, 7: 29.88}


@pytest.mark.parametrize("case", ["random", "disjoint-support", "deterministic-proposer"])
def test_accept_or_resample_gives_the_target_distribution(case):
    """Draw d ~ q, accept or resample: the emitted token must be distributed as p (any q)."""
    rng = np.random.default_rng(42)
    n = 8
    p = rng.dirichlet(np.ones(n))
    q = rng.dirichlet(np.ones(n) * 0.5)
    if case == "disjoint-support":  # q proposes a token p never emits; p has mass q never proposes
        p[0], q[1] = 0.0, 0.0
        p, q = p / p.sum(), q / q.sum()
    draws = 30000
    counts = np.zeros(n)
    accepted = 0
    for _ in range(draws):
        if case == "deterministic-proposer":  # n-gram lookup: always proposes token 3
            ok, tok = accept_or_resample(p, None, 3, rng)
        else:
            d = int(rng.choice(n, p=q))
            ok, tok = accept_or_resample(p, q, d, rng)
        counts[tok] += 1
        accepted += ok
    chi2, dof = _chi_square(counts, p)
    assert chi2 < _CRITICAL[dof], (chi2, counts / draws, p)
    expected_acceptance = p[3] if case == "deterministic-proposer" else np.minimum(p, q).sum()
    assert abs(accepted / draws - expected_acceptance) < 0.015


def test_final_distribution_follows_the_chain_order():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], dtype=np.float32))
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    p = final_distribution(logits, SamplingParams(**base))
    assert np.allclose(p, [0.5, 0.2, 0.15, 0.1, 0.05])
    p = final_distribution(logits, SamplingParams(**{**base, "top_k": 2}), n=7)
    assert p.shape == (7,) and np.allclose(p[:2], [0.5 / 0.7, 0.2 / 0.7]) and p[2:].sum() == 0
    p = final_distribution(logits, SamplingParams(**{**base, "top_p": 0.8}))  # 0.5+0.2+0.15 >= 0.8
    assert np.count_nonzero(p) == 3
    p = final_distribution(logits, SamplingParams(**{**base, "min_p": 0.25}))  # >= 0.125
    assert np.count_nonzero(p) == 3
    hot = final_distribution(logits, SamplingParams(**{**base, "temperature": 2.0}))
    assert hot[0] < 0.5 and np.isclose(hot.sum(), 1.0)
    forbid = np.array([True, False, False, False, False])
    assert final_distribution(logits, SamplingParams(**base), forbid=forbid)[0] == 0.0


def test_greedy_token_matches_plain_greedy_and_penalties():
    logits = np.array([1.0, 3.0, 3.0, 2.9], dtype=np.float32)
    assert greedy_token(logits, GREEDY) == 1  # first of equal maxima, like numpy argmax
    pen = SamplingParams(temperature=0.0, repeat_penalty=1.5, repeat_last_n=64)
    assert greedy_token(logits, pen, history=[1, 2]) == 3  # 3.0/1.5 < 2.9
    assert greedy_token(logits, GREEDY, forbid=np.array([False, True, True, False])) == 3


def test_ngram_lookup_proposes_what_followed_the_longest_match():
    idx = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3])
    assert idx.propose(3) == [4, 5, 9]  # "2 3" was followed by 4 5 9
    idx.extend([7])
    assert idx.propose(2) == []  # 7 never appeared before
    idx.extend([1, 2])
    assert idx.propose(4) == [3, 4, 5, 9]  # "1 2" matched at the start (length 2 beats 1)
    assert NgramIndex([5, 5, 5]).propose(2) == [5]
    assert idx.propose(0) == []


# ----------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def spec(smollm2_path):
    """SmolLM2 as target and as its own draft (the ideal draft: every token should be accepted)."""
    with running_host(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=1024))) as (
        host,
        loaded,
    ):
        yield host, loaded, host.load_draft(str(smollm2_path))


def _prompt(loaded: P.Loaded, text: str) -> str:
    return conversation_prompt(loaded, "", [ChatMessage("user", text)]).text


@pytest.mark.slow
def test_draft_gets_the_targets_context_and_the_pairing_verdict(spec):
    host, loaded, draft = spec
    assert draft.n_ctx == loaded.n_ctx == 1024 and draft.n_ctx_train == 8192
    assert [c["name"] for c in draft.checks] == [
        "vocabulary type",
        "BOS token",
        "EOS token",
        "vocabulary size",
        "token texts",
    ]
    assert all(c["ok"] for c in draft.checks)
    assert any("KV" in line or "kv" in line for line in draft.memory_log)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "lookup"])
def test_greedy_speculation_is_plain_greedy_token_for_token(spec, mode):
    host, loaded, _ = spec
    for text in PROMPTS:
        prompt = _prompt(loaded, text)
        plain = host.generate(prompt, max_tokens=40, sampling=GREEDY)
        deltas: list[P.Delta] = []
        fast = host.generate(
            prompt,
            max_tokens=40,
            sampling=GREEDY,
            draft=mode,
            on_event=lambda m, d=deltas: isinstance(m, P.Delta) and d.append(m),
        )
        assert fast.tokens == plain.tokens and fast.text == plain.text
        assert fast.stop_reason == plain.stop_reason
        assert "".join(d.text for d in deltas) == fast.text
        assert [t for d in deltas for t in d.tokens] == fast.tokens
        assert fast.draft == mode and fast.n_target_decodes >= 1
        if mode == "model":  # its own draft: everything it proposes is what the target says
            assert fast.acceptance >= 0.95 and fast.mean_accepted > 2
            assert fast.n_target_decodes < len(fast.tokens) / 2


@pytest.mark.slow
def test_seeded_sampling_with_a_draft_is_reproducible(spec):
    host, loaded, _ = spec
    prompt = _prompt(loaded, "Tell me a story about a fox.")
    hot = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=7)
    a = host.generate(prompt, max_tokens=32, sampling=hot, draft="model")
    b = host.generate(prompt, max_tokens=32, sampling=hot, draft="model")
    c = host.generate(
        prompt, max_tokens=32, sampling=SamplingParams(**{**hot.to_dict(), "seed": 8}), draft="model"
    )
    assert a.tokens == b.tokens and len(a.tokens) == 32 and a.text.strip()
    assert a.tokens != c.tokens
    assert a.n_drafted > 0 and 0.0 < a.acceptance <= 1.0
    lookup = host.generate(prompt, max_tokens=16, sampling=hot, draft="lookup")
    assert lookup.tokens and lookup.stop_reason in ("length", "eog")


@pytest.mark.slow
def test_cancel_mid_speculation(spec):
    host, loaded, _ = spec
    prompt = _prompt(loaded, "Count from 1 to 1000, separated by commas.")
    done = cancelled_mid_reply(host, prompt, max_tokens=900, sampling=GREEDY, draft="model")
    assert done.stop_reason == "cancelled"
    assert 0 < len(done.tokens) < 900
    # both caches are consistent afterwards: drafting still gives plain greedy's answer
    prompt = _prompt(loaded, PROMPTS[0])
    assert (
        host.generate(prompt, max_tokens=12, sampling=GREEDY, draft="model").tokens
        == host.generate(prompt, max_tokens=12, sampling=GREEDY).tokens
    )


@pytest.mark.slow
def test_an_incompatible_draft_is_refused_with_the_reasons(spec, gemma3_path):
    host, loaded, _ = spec
    with pytest.raises(InvalidSettings) as err:
        host.load_draft(str(gemma3_path))
    message = str(err.value)
    assert "cannot draft for" in message and "vocabulary size" in message and "262,144" in message
    # the refusal happened before anything was unloaded: the old draft still works
    assert host.generate(_prompt(loaded, "Hi"), max_tokens=4, sampling=GREEDY, draft="model").tokens


@pytest.mark.slow
def test_seed_scenario_target_context_smaller_than_the_drafts_default(smollm2_path):
    """The issue's seed scenario (llama.cpp b9550 crashed here): the budget fits the target at
    1024 tokens, the draft's own default would be its training context (8192)."""
    from engine.core.memory_types import Device, PlanSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.analytic import analytic_plan
    from engine.plan.fit import DraftSpec, fit

    info = inspect_gguf(str(smollm2_path))
    devices = [Device("CPU", "cpu", 64 << 30, 64 << 30)]
    pair = [2 * analytic_plan(info, PlanSettings(n_ctx=n), devices).bytes_for() for n in (1024, 1280)]
    settings = PlanSettings(n_ctx=0)
    result = fit(
        info,
        settings,
        devices,
        plan_fn=analytic_plan,
        budget_bytes=sum(pair) // 2,
        margin_bytes=0,
        draft=DraftSpec(info, settings),
    )
    assert result.fits and result.plan.n_ctx == 1024 < info.n_ctx_train == 8192
    assert result.extra["draft_plan"].n_ctx == 1024
    with running_host(P.LoadParams(str(smollm2_path), result.settings)) as (host, loaded):
        draft = host.load_draft(str(smollm2_path))
        assert loaded.n_ctx == draft.n_ctx == 1024
        done = host.generate(
            _prompt(loaded, "Name three fruits."), max_tokens=24, sampling=GREEDY, draft="model"
        )
        assert done.tokens and done.n_drafted > 0 and done.stop_reason in ("eog", "length")


@pytest.mark.slow
def test_recurrent_target_is_refused_with_the_reason(tmp_path):
    from tests.helpers.gguf_factory import write_family, write_llama

    target, draft = write_family("mamba", tmp_path), write_llama(tmp_path / "draft.gguf")
    with running_host() as (host, _):
        with pytest.raises(NotReady, match="load the target model first"):
            host.load_draft(str(draft))
        host.load(P.LoadParams(path=str(target), settings=PlanSettings(n_ctx=256)))
        with pytest.raises(InvalidSettings, match="recurrent.*cannot be rolled back"):
            host.load_draft(str(draft))
        with pytest.raises(InvalidSettings, match="recurrent"):
            host.generate("w1 w2 w3", max_tokens=4, sampling=GREEDY, draft="lookup")
        with pytest.raises((NotReady, InvalidSettings), match="no draft model is loaded|recurrent"):
            host.generate("w1 w2 w3", max_tokens=4, sampling=GREEDY, draft="model")


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--draft", "SELF"], ["--lookup"]])
def test_cli_chat_reports_acceptance(smollm2_path, flags):
    flags = [str(smollm2_path) if f == "SELF" else f for f in flags]
    r = kvdeck(
        "chat",
        str(smollm2_path),
        "--prompt",
        "Say hello.",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--n-ctx",
        "512",
        "--json",
        *flags,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("n_drafted", "n_accepted", "acceptance", "mean_accepted", "n_target_decodes"):
        assert key in data
    assert data["draft"] == ("model" if "--draft" in flags else "lookup")
    assert 0.0 <= data["acceptance"] <= 1.0 and data["n_tokens"] > 0
