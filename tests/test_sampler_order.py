"""The sampler chain runs in llama.cpp's order, so a seeded reply with a penalty is llama-server's.

llama.cpp's common sampler (common/sampling.cpp ``common_sampler_init``) adds the logit bias,
then the default ``samplers`` list (common/common.h: penalties, dry, top_n_sigma, top_k,
typical_p, top_p, min_p, xtc, temperature), then dist; llama-server feeds the prompt to the
chain before the first token (tools/server/server-context.cpp ``init_sampler``). Without a
penalty the penalties sampler does nothing, so the chain may start with top-k (the fast path);
with one it must come first: a penalty can push a token out of the k best.
"""

from __future__ import annotations

import os

import llama_cpp.llama_cpp as LL
import pytest

from engine.child.batch_backend import device_spec
from engine.child.sampler import LLAMA_ORDER, build_chain, chain_name, chain_spec
from engine.child.slots import sampler_specs
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.protocol import GenerateRequest, LoadParams
from tests.helpers.burst import held_burst
from tests.helpers.runtime_host import running_host

#: llama.cpp's sampler names (``llama_sampler_name``) for the entries of LLAMA_ORDER.
NAMES = {
    "logit_bias": "logit-bias",
    "penalties": "penalties",
    "top_k": "top-k",
    "top_p": "top-p",
    "min_p": "min-p",
    "temp": "temp",
    "dist": "dist",
}
SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.3, seed=7)
PENALTIES = [
    ({"repeat_penalty": 1.3}, {}),
    ({"repeat_penalty": 1.0}, {"frequency_penalty": 0.5}),
    ({"repeat_penalty": 1.0}, {"presence_penalty": 0.4}),
]


def names(spec) -> list[str]:
    chain = build_chain(spec, 49152)
    try:
        return chain_name(chain).split(",")
    finally:
        LL.llama_sampler_free(chain)


@pytest.mark.parametrize(("fields", "openai"), PENALTIES)
def test_with_a_penalty_every_chain_runs_in_llama_cpps_default_order(fields, openai):
    s = SamplingParams(**{**SAMPLED.to_dict(), **fields})
    sampling = {**s.to_dict(), **openai}
    main, first = sampler_specs(s, sampling, (2,), no_empty=True)
    device = device_spec(s, sampling, grammar=False, logprobs=False)
    llama_order = [NAMES[n] for n in LLAMA_ORDER]
    assert names(device) == ["penalties", "top-k", "top-p", "min-p", "temp", "dist"]
    # on the CPU an exact cut to the k + n best comes first (chain_spec): then llama.cpp's order
    assert names(main) == ["top-k", *names(device)]
    assert names(first) == ["logit-bias", *names(main)]  # llama.cpp's logit bias comes first too
    assert [n for n in llama_order if n in names(first)[2:]] == names(first)[2:]

    greedy = SamplingParams(**{**s.to_dict(), "temperature": 0.0})
    cpu, _ = sampler_specs(greedy, {**greedy.to_dict(), **openai}, (), no_empty=False)
    dev = device_spec(greedy, {**greedy.to_dict(), **openai}, grammar=False, logprobs=False)
    # greedy is temperature 0 after the penalties: the argmax of the penalised logits
    assert names(cpu) == ["top-k", "penalties", "greedy"] and names(dev) == ["penalties", "top-k", "dist"]


def test_the_cut_before_the_penalties_is_made_only_where_it_cannot_change_the_k_best():
    """A penalty that can raise a logit (repeat < 1, negative frequency or presence), a window
    too large to pay, or no top-k at all: the chain is llama.cpp's literally."""
    for s, freq, pres in (
        (SamplingParams(**{**SAMPLED.to_dict(), "repeat_penalty": 0.9}), 0.0, 0.0),
        (SAMPLED, -0.5, 0.0),
        (SAMPLED, 0.0, -0.2),
        (SamplingParams(**{**SAMPLED.to_dict(), "repeat_last_n": 8192}), 0.0, 0.0),
        (SamplingParams(**{**SAMPLED.to_dict(), "top_k": 0}), 0.0, 0.0),
    ):
        assert names(chain_spec(s, device=False, freq=freq, pres=pres))[0] == "penalties", s
    assert chain_spec(SAMPLED, device=False)[0] == ("top_k", SAMPLED.top_k + SAMPLED.repeat_last_n)


def test_without_a_penalty_the_chain_starts_with_top_k_and_is_llama_cpps_without_a_no_op():
    for s in (
        SamplingParams(**{**SAMPLED.to_dict(), "repeat_penalty": 1.0}),
        SamplingParams(repeat_last_n=0),
    ):
        spec = chain_spec(s, device=False)
        assert names(spec) == ["top-k", "top-p", "min-p", "temp", "dist"]


# ----------------------------------------------------------------------------- with SmolLM2
def llama_cpp_reply(
    path: str, prompt: str, s: SamplingParams, n: int, freq: float = 0.0, pres: float = 0.0
) -> list[int]:
    """What llama-server's chain (common_sampler_init with the default order, the prompt fed
    first) samples, built here with llama.cpp's own sampler API and nothing of KV Deck's."""
    mparams = LL.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = LL.llama_model_load_from_file(path.encode(), mparams)
    cparams = LL.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 512
    ctx = LL.llama_init_from_model(model, cparams)
    vocab = LL.llama_model_get_vocab(model)
    n_vocab = LL.llama_vocab_n_tokens(vocab)
    chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
    for smpl in (
        LL.llama_sampler_init_penalties(n_vocab, s.repeat_last_n, s.repeat_penalty, freq, pres),
        LL.llama_sampler_init_top_k(s.top_k),
        LL.llama_sampler_init_top_p(s.top_p, 0),
        LL.llama_sampler_init_min_p(s.min_p, 0),
        LL.llama_sampler_init_temp_ext(s.temperature, 0.0, 1.0),
        LL.llama_sampler_init_dist(s.seed),
    ):
        LL.llama_sampler_chain_add(chain, smpl)
    try:
        data = prompt.encode()
        arr = (LL.llama_token * 512)()
        n_prompt = LL.llama_tokenize(vocab, data, len(data), arr, 512, True, True)
        tokens = list(arr[:n_prompt])
        for tok in tokens:
            LL.llama_sampler_accept(chain, tok)
        batch = (LL.llama_token * n_prompt)(*tokens)
        assert LL.llama_decode(ctx, LL.llama_batch_get_one(batch, n_prompt)) == 0
        out: list[int] = []
        while len(out) < n:
            tok = LL.llama_sampler_sample(chain, ctx, -1)  # accepts it too
            if LL.llama_vocab_is_eog(vocab, tok):
                break
            out.append(tok)
            one = (LL.llama_token * 1)(tok)
            assert LL.llama_decode(ctx, LL.llama_batch_get_one(one, 1)) == 0
        return out
    finally:
        LL.llama_sampler_free(chain)
        LL.llama_free(ctx)
        LL.llama_model_free(model)


PROMPT = "<|im_start|>user\nList ten animals, one per line.<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_a_seeded_reply_with_a_penalty_is_llama_cpps_token_for_token(smollm2_path):
    prompt = PROMPT
    params = LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512))
    with running_host(params) as (host, _):
        done = host.generate(prompt, max_tokens=40, sampling=SAMPLED, no_empty=False)
    reference = llama_cpp_reply(str(smollm2_path), prompt, SAMPLED, 40)
    assert done.tokens[: len(reference)] == reference and len(done.tokens) >= len(reference)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["0", "1"])
def test_the_servers_batch_with_openai_penalties_is_llama_cpps_token_for_token(smollm2_path, backend):
    """The continuous batch (CPU chains, or device chains with KVDECK_BACKEND_SAMPLING=1) with
    repeat, frequency and presence penalties together."""
    freq, pres = 0.4, 0.3
    sampling = {**SAMPLED.to_dict(), "frequency_penalty": freq, "presence_penalty": pres}
    params = LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=1024, n_seq_max=2))
    env = {**os.environ, "KVDECK_BACKEND_SAMPLING": backend}
    with running_host(params, env=env) as (host, _):
        build = lambda i: GenerateRequest(  # noqa: E731
            id=i, prompt=PROMPT, max_tokens=40, sampling=sampling, serve=True, no_empty=False
        )
        _, (done,), _ = held_burst(host, [build])
    reference = llama_cpp_reply(str(smollm2_path), PROMPT, SAMPLED, 40, freq, pres)
    assert done.tokens[: len(reference)] == reference and len(done.tokens) >= len(reference)


@pytest.mark.slow
def test_the_servers_batch_with_llama_servers_defaults_is_llama_cpps_token_for_token(smollm2_path):
    """No penalty: every row's chain starts with top-k, which the batch loop samples from the
    few tokens that can be among the k best (engine.child.topk_cut), two sequences at once."""
    sampling = {**SAMPLED.to_dict(), "repeat_penalty": 1.0}
    params = LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=1024, n_seq_max=2))
    with running_host(params) as (host, _):
        build = lambda i: GenerateRequest(  # noqa: E731
            id=i, prompt=PROMPT, max_tokens=40, sampling=sampling, serve=True, no_empty=False
        )
        _, (a, b), _ = held_burst(host, [build, build])
    reference = llama_cpp_reply(str(smollm2_path), PROMPT, SamplingParams(**sampling), 40)
    for done in (a, b):
        assert done.tokens[: len(reference)] == reference and len(done.tokens) >= len(reference)
