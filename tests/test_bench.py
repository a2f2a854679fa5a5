"""The speed benchmark (engine.child.bench, ``kvdeck bench``) and the sampling paths of the hot loop."""

from __future__ import annotations

import json
import os

import pytest

from engine import protocol as P
from engine.cli.main import main as cli_main
from engine.core.errors import InvalidSettings
from engine.core.memory_types import PlanSettings
from engine.core.sampling import PRESETS, SamplingParams
from engine.runtime.host import RuntimeHost
from tests.helpers.cli import kvdeck, weight_buffers
from tests.helpers.runtime_host import running_host

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
CHAT = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
#: The assistant's turn is complete: the most likely next token ends the reply.
FINISHED = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nHi! How can I help you today?"


def _host(path, sampler: str = "auto", n_ctx: int = 1024):
    return running_host(
        P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=n_ctx)),
        env={**os.environ, "KVDECK_SAMPLER": sampler},
    )


def test_bench_measures_each_repetition_and_leaves_the_model_usable(smollm2_path):
    with _host(smollm2_path) as (host, _):
        res = host.bench(n_prompt=32, n_gen=8, depth=16, repetitions=2)
        assert len(res.pp_tokens_per_s) == 2 and len(res.tg_tokens_per_s) == 2
        assert all(x > 0 for x in res.pp_tokens_per_s + res.tg_tokens_per_s)
        assert (res.n_prompt, res.n_gen, res.depth) == (32, 8, 16)
        assert res.sampler and res.devices and 0.0 <= res.graph_reuse <= 1.0
        only_tg = host.bench(
            n_prompt=0, n_gen=4, repetitions=1, sampler="cpu-chain", sampling=PRESETS["Balanced"]
        )
        assert only_tg.pp_tokens_per_s == [] and len(only_tg.tg_tokens_per_s) == 1
        with pytest.raises(InvalidSettings, match="context of"):
            host.bench(n_prompt=16, n_gen=8, depth=5000)
        assert host.generate(CHAT, max_tokens=4, sampling=GREEDY).tokens  # still usable


def test_cli_bench_json_contract(smollm2_path, capsys):
    assert cli_main(["bench", str(smollm2_path), "--pp", "16", "--tg", "4", "--reps", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "pp", "tg", "settings", "device"} <= set(data)
    assert data["pp"]["n"] == 16 and data["pp"]["tokens_per_s"] > 0
    assert data["tg"]["n"] == 4 and data["tg"]["depth"] == 0 and data["tg"]["tokens_per_s"] > 0
    assert data["settings"]["type_k"] == "f16" and data["device"]["devices"]


@pytest.mark.parametrize("mode", ["mmap", "none"])
def test_cli_bench_loads_the_weights_the_way_load_mode_says(smollm2_path, tmp_path, mode):
    """``kvdeck bench`` takes plan's ``--load-mode``: the JSON settings say which, and the runtime
    loads that way (llama.cpp's log names a ``*_Mapped`` buffer only when the file is mapped)."""
    extra = () if mode == "mmap" else ("--load-mode", mode)
    args = ("bench", str(smollm2_path), "--pp", "16", "--tg", "4", "--reps", "1", "--json", *extra)
    r = kvdeck(*args, env={"KVDECK_DATA_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["load_mode"] == mode
    buffers = weight_buffers(tmp_path)
    assert buffers and any(b.endswith("_Mapped") for b in buffers) == (mode == "mmap"), buffers


def test_cli_bench_rejects_nothing_to_measure(smollm2_path, capsys):
    assert cli_main(["bench", str(smollm2_path), "--pp", "0", "--tg", "0"]) == 2
    assert "nothing to measure" in capsys.readouterr().err


def _paths(host: RuntimeHost) -> list[list[int]]:
    pen = SamplingParams(temperature=0.0, repeat_penalty=1.3)
    top1 = SamplingParams(temperature=0.8, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=3)
    seeded = SamplingParams(**{**PRESETS["Balanced"].to_dict(), "seed": 42})
    out = [
        host.generate(CHAT, max_tokens=24, sampling=GREEDY).tokens,
        host.generate(CHAT, max_tokens=24, sampling=pen).tokens,
        # on a device chain only an end-of-generation token is kept: decoded again on the CPU
        host.generate(FINISHED, max_tokens=4, sampling=top1).tokens,
        host.generate(FINISHED, max_tokens=4, sampling=GREEDY).tokens,
    ]
    assert host.generate(FINISHED, max_tokens=4, sampling=GREEDY, no_empty=False).tokens == []
    a = host.generate(CHAT, max_tokens=12, sampling=seeded).tokens
    assert a == host.generate(CHAT, max_tokens=12, sampling=seeded).tokens
    return out


@pytest.fixture(scope="module")
def reference_paths(smollm2_path) -> list[list[int]]:
    with _host(smollm2_path, "cpu-chain") as (host, _):
        return _paths(host)


@pytest.mark.parametrize("sampler", ["backend", "backend-topk1", "cpu"])
def test_sampling_paths_agree_with_the_cpu_chain(smollm2_path, reference_paths, sampler):
    """Greedy, greedy with penalties and the never-empty first token give the same tokens on
    every path (the device chains included, which run on the CPU backend here)."""
    with _host(smollm2_path, sampler) as (host, _):
        assert _paths(host) == reference_paths
    assert all(reference_paths)
