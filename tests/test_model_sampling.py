"""Specification of the sampling a GGUF recommends (``general.sampling.*``).

llama-server makes a model's recommended sampling its defaults (common/common.cpp,
``common_init_sampler_from_model``): a request that leaves a field out gets the author's value,
one that names it gets its own. KV Deck's API does the same for the fields its sampler has.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.core.sampling import API_DEFAULTS, SamplingParams
from engine.gguf.inspect import inspect_gguf
from engine.gguf.sampling_meta import recommended_sampling
from engine.serve.openai_api import parse_completion, request_defaults
from engine.serve.server import ApiServer, ServedModel, ServerConfig
from tests.helpers.gguf_factory import write_llama
from tests.helpers.runtime_host import running_host


def _loaded(path: Path) -> P.Loaded:
    """What the runtime reports for a model at ``path`` (only the path matters here)."""
    return P.Loaded(0, str(path), "", 256, 256, 256, 320, 0, 0, 0, False, False, False, 1, 0.0, "", "", "")


def test_the_keys_are_read_as_llama_cpp_reads_them() -> None:
    """Numbers of either type, or text that starts with one (strtol/strtof); XTC and mirostat
    have no counterpart here; values the sampler would refuse are dropped, not fatal."""
    meta = {
        "general.sampling.temp": "0.6",
        "general.sampling.top_k": 20.0,  # a float for an integer key: strtol reads "20.000000"
        "general.sampling.top_p": 0.95,
        "general.sampling.min_p": 7.0,  # out of range: dropped
        "general.sampling.penalty_repeat": True,  # printed "true": nothing to parse
        "general.sampling.penalty_last_n": "128 tokens",
        "general.sampling.xtc_probability": 0.5,
    }
    assert recommended_sampling(meta) == {
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "repeat_last_n": 128,
    }
    assert recommended_sampling({}) == {}


def test_a_file_without_recommendations_gets_llama_servers_defaults(tmp_path: Path) -> None:
    plain = write_llama(tmp_path / "plain.gguf")
    assert inspect_gguf(plain).sampling == {}
    assert request_defaults(_loaded(plain)) == API_DEFAULTS
    assert request_defaults(_loaded(tmp_path / "gone.gguf")) == API_DEFAULTS
    assert request_defaults(None) == API_DEFAULTS  # no model loaded (the request gets a 503 later)


def test_the_models_recommendation_fills_what_a_request_leaves_out(tmp_path: Path) -> None:
    path = write_llama(tmp_path / "rec.gguf", **{"general.sampling.temp": 0.3, "general.sampling.top_k": 5})
    loaded = _loaded(path)
    left_out = SamplingParams.from_dict(parse_completion({"model": "m", "prompt": "x"}, loaded).sampling)
    assert (left_out.temperature, left_out.top_k, left_out.top_p) == (0.3, 5, API_DEFAULTS.top_p)
    named = parse_completion({"model": "m", "prompt": "x", "temperature": 1.2}, loaded).sampling
    assert named["temperature"] == 1.2 and named["top_k"] == 5


@pytest.mark.slow
def test_a_served_model_that_recommends_greedy_answers_greedily(tmp_path: Path) -> None:
    """A model whose file says temperature 0: requests without a temperature give the same
    reply whatever their seed; the same model without the key samples (seeds differ)."""
    replies = {}
    for name, kv in (("greedy", {"general.sampling.temp": 0.0}), ("plain", {})):
        path = write_llama(tmp_path / f"{name}.gguf", **kv)
        params = P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=256))
        with running_host(params) as (host, loaded):
            model = ServedModel(host=lambda h=host: h, loaded=lambda lo=loaded: lo, slots=lambda: 1)
            server = ApiServer(model, ServerConfig(port=0))
            url = server.start()
            try:
                replies[name] = [
                    httpx.post(
                        f"{url}/v1/completions",
                        json={"model": "m", "prompt": "a b c", "max_tokens": 12, "seed": seed},
                        timeout=120,
                    ).json()["choices"][0]["text"]
                    for seed in (1, 2, 3)
                ]
            finally:
                server.stop()
    assert len(set(replies["greedy"])) == 1
    assert len(set(replies["plain"])) > 1
