"""The runtime host and its child process, on real models."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from engine import protocol as P
from engine.chat.conversation import conversation_prompt, reply
from engine.chat.template import ChatMessage
from engine.core.errors import ModelFileError, RuntimeFailure, TemplateError
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.runtime.host import RuntimeHost
from tests.helpers.runtime_host import cancelled_mid_reply, running_host

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with running_host(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=2048))) as (
        host,
        loaded,
    ):
        yield host, loaded


def test_load_reports_the_model(smol, smollm2_path):
    host, loaded = smol
    assert loaded.path == str(smollm2_path)
    assert loaded.n_ctx == 2048 and loaded.n_ctx_train == 8192
    assert loaded.n_vocab == 49152
    assert "<|im_start|>" in loaded.chat_template
    assert loaded.load_s > 0


def test_chat_reply_uses_the_models_template_and_streams(smol):
    host, loaded = smol
    chunks: list[str] = []
    result = reply(
        host,
        loaded,
        [ChatMessage("user", "What is the capital of France?")],
        sampling=GREEDY,
        max_tokens=24,
        on_text=chunks.append,
    )
    assert result.prompt.mode == "chat"
    assert result.prompt.text.endswith("<|im_start|>assistant\n")
    assert result.done.text.strip()
    assert "".join(chunks) == result.done.text
    assert result.done.tokens_per_s > 0


def test_greedy_is_deterministic(smol):
    host, loaded = smol
    turns = [ChatMessage("user", "Write one sentence about the sea.")]
    a = reply(host, loaded, turns, sampling=GREEDY, max_tokens=32).done
    host.generate("unrelated text to disturb the cache", max_tokens=4, sampling=GREEDY)
    b = reply(host, loaded, turns, sampling=GREEDY, max_tokens=32).done
    assert a.tokens == b.tokens and a.tokens


def test_seeded_sampling_is_reproducible_and_seed_matters(smol):
    host, loaded = smol
    prompt = conversation_prompt(loaded, "", [ChatMessage("user", "Tell me a story.")]).text
    hot = SamplingParams(temperature=1.2, top_k=100, top_p=1.0, min_p=0.0, seed=7)
    a = host.generate(prompt, max_tokens=24, sampling=hot)
    b = host.generate(prompt, max_tokens=24, sampling=hot)
    c = host.generate(prompt, max_tokens=24, sampling=SamplingParams(**{**hot.to_dict(), "seed": 8}))
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_multi_turn_reuses_the_kv_cache(smol):
    host, loaded = smol
    turns = [ChatMessage("user", "Name a colour.")]
    first = reply(host, loaded, turns, sampling=GREEDY, max_tokens=8).done
    turns += [ChatMessage("assistant", first.text), ChatMessage("user", "Another one?")]
    second = reply(host, loaded, turns, sampling=GREEDY, max_tokens=8).done
    assert second.n_reused >= first.n_prompt


def test_cancel_stops_a_running_generation(smol):
    host, loaded = smol
    prompt = conversation_prompt(loaded, "", [ChatMessage("user", "Count from 1 to 1000.")]).text
    done = cancelled_mid_reply(host, prompt, timeout=60, max_tokens=4000, sampling=GREEDY)
    assert done.stop_reason == "cancelled"
    assert 0 < len(done.tokens) < 4000
    assert host.generate("Hello", max_tokens=2, sampling=GREEDY).tokens  # still usable


def test_log_lines_reach_python_logging_with_levels(smollm2_path, caplog):
    caplog.set_level(logging.INFO, logger="kvdeck.llama")
    with running_host(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512))):
        pass  # loading is what writes the log lines
    records = [r for r in caplog.records if r.name == "kvdeck.llama"]
    assert any("llama_model_loader" in r.getMessage() or "llama_context" in r.getMessage() for r in records)
    assert all(r.levelno in (logging.INFO, logging.WARNING, logging.ERROR) for r in records)
    assert not any(r.getMessage().startswith("\n") for r in records)


def test_base_model_gets_completion_mode_and_a_non_empty_reply(gemma3_path):
    with running_host(P.LoadParams(path=str(gemma3_path), settings=PlanSettings(n_ctx=1024))) as (
        host,
        loaded,
    ):
        result = reply(
            host,
            loaded,
            [ChatMessage("user", "The three primary colours are")],
            sampling=GREEDY,
            max_tokens=16,
        )
    if loaded.chat_template:
        pytest.skip("this Gemma 3 build ships a chat template")
    assert result.prompt.mode == "completion"
    assert result.prompt.text == "The three primary colours are"
    assert result.done.text.strip()


def test_killed_child_becomes_a_readable_outcome(smollm2_path):
    with RuntimeHost() as host:
        loaded = host.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=1024)))
        streaming = threading.Event()
        errors: list[Exception] = []

        def run():
            try:
                host.generate(
                    "<|im_start|>user\nCount to 1000.<|im_end|>\n<|im_start|>assistant\n",
                    max_tokens=3000,
                    sampling=GREEDY,
                    on_event=lambda m: isinstance(m, P.Delta) and streaming.set(),
                )
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        assert streaming.wait(60)
        os.kill(host.pid, signal.SIGKILL)
        t.join(30)
        assert errors and isinstance(errors[0], RuntimeFailure)
        assert "killed (SIGKILL) while generating" in str(errors[0])
        assert host.outcome is not None and host.outcome.signal_name == "SIGKILL"
        assert not host.running
        assert loaded.n_ctx == 1024
        with pytest.raises(RuntimeFailure):
            host.generate("x", max_tokens=1)


def test_segfault_is_reported_as_a_crash(smollm2_path):
    with RuntimeHost() as host:
        os.kill(host.pid, signal.SIGSEGV)
        deadline = time.time() + 10
        while host.outcome is None and time.time() < deadline:
            time.sleep(0.05)
        assert host.outcome is not None
        assert "crashed (segmentation fault)" in host.outcome.sentence


def test_broken_file_is_a_model_error_and_the_child_survives(tmp_path, smollm2_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with running_host() as (host, _):
        with pytest.raises(ModelFileError) as info:
            host.load(P.LoadParams(path=str(bad)))
        assert "broken.gguf" in str(info.value) and "\n" not in str(info.value)
        assert host.running
        assert host.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512))).n_ctx == 512


def test_hostile_template_cannot_hang_or_escape():
    from engine.chat.template import render_chat

    msgs = [ChatMessage("user", "hi")]
    with pytest.raises(TemplateError):
        render_chat("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", msgs)
    with pytest.raises(TemplateError):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", msgs)
    with pytest.raises(TemplateError):
        render_chat("{{ 'x' * 1000000000000 }}", msgs)


def test_an_engine_folder_where_kvdeck_starts_does_not_replace_the_runtime(
    tmp_path, monkeypatch, smollm2_path
):
    """The runtime child runs the parent's own engine, not an ``engine`` package lying in the
    working directory the user started KV Deck from (``python -m`` would put it first)."""
    (tmp_path / "engine" / "child").mkdir(parents=True)
    (tmp_path / "engine" / "__init__.py").write_text("raise SystemExit('the wrong engine ran')\n")
    (tmp_path / "engine" / "child" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with running_host(P.LoadParams(str(smollm2_path), PlanSettings(n_ctx=256))) as (host, loaded):
        assert loaded is not None
        assert host.generate("Hi", max_tokens=2).tokens
