"""The OpenAI-compatible API server, driven with the official ``openai`` client over loopback.

One runtime (the demo model, 2 parallel sequences, 1 queued request allowed) serves the whole
module, so the slow part (loading) happens once; replies are kept short for slow CPUs.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from types import SimpleNamespace

import httpx
import llama_cpp.llama_cpp as LL
import openai
import pytest

from engine import protocol as P
from engine.child.batch_backend import device_spec
from engine.child.sampler import build_chain, chain_name
from engine.child.slots import StopText, sampler_specs
from engine.core.errors import KvDeckError
from engine.core.memory_types import PlanSettings
from engine.core.sampling import API_DEFAULTS, SamplingParams
from engine.serve.openai_api import parse_completion
from engine.serve.server import ApiServer, ServedModel, ServerConfig, check_config
from tests.helpers.cli import kvdeck, spawn_kvdeck, weight_buffers
from tests.helpers.runtime_host import running_host

MODEL = "SmolLM2-135M-Instruct.Q4_1"
SLOTS = 2


# ----------------------------------------------------------------------------- without a model
def test_stop_strings_are_cut_and_never_streamed_in_part():
    t = StopText(["</end>", "STOP"])
    sent = [t.add("Hello </e"), t.ready()]
    assert sent == [False, "Hello "]  # "</e" may begin a stop string: held back
    assert t.add("nd> more") is True and t.text == "Hello "
    assert t.rest() == "" and t.sent == len(t.text)
    u = StopText(["ab"])
    u.add("xa")
    assert u.ready() == "x"
    u.add("c")  # "ac" cannot become "ab" any more: released
    assert u.ready() == "ac" and not u.stopped


def test_non_loopback_bind_needs_an_api_key():
    with pytest.raises(KvDeckError, match="API key"):
        check_config(ServerConfig(host="0.0.0.0"))
    with pytest.raises(KvDeckError, match="API key"):
        ApiServer(ServedModel(lambda: None, lambda: None, lambda: 1), ServerConfig(host="192.168.1.5"))
    check_config(ServerConfig(host="0.0.0.0", api_key="secret"))
    check_config(ServerConfig(host="::1"))
    r = kvdeck("serve", "--demo", "--host", "0.0.0.0", env={"KVDECK_API_KEY": ""}, timeout=120)
    assert r.returncode == 2 and "api key" in r.stderr.lower() and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_serve_says_how_llama_cpp_read_the_weights(smollm2_path, tmp_path):
    """``kvdeck serve --load-mode none`` copies the weights in (llama.cpp's log names no
    ``*_Mapped`` buffer) and /v1/kvdeck/memory says so under chat's and bench's key."""
    proc = spawn_kvdeck(
        "serve",
        str(smollm2_path),
        *("--port", "0", "--parallel", "1", "--ctx", "512", "--load-mode", "none"),
        env={"KVDECK_DATA_DIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving MODEL at http://127.0.0.1:PORT/v1 (...)"
        assert " at http" in line, proc.stderr.read() if proc.stderr else ""
        url = line.split(" at ", 1)[1].split()[0]
        memory = httpx.get(f"{url}/kvdeck/memory", timeout=60).json()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert memory["load_mode"] == "none"
    buffers = weight_buffers(tmp_path)
    assert buffers and not any(b.endswith("_Mapped") for b in buffers), buffers


def test_fields_a_client_leaves_out_take_llama_servers_defaults_and_build_no_penalty_sampler():
    job = parse_completion({"model": "m", "prompt": "x"})
    assert SamplingParams.from_dict(job.sampling) == API_DEFAULTS
    assert (API_DEFAULTS.temperature, API_DEFAULTS.top_k, API_DEFAULTS.repeat_penalty) == (0.8, 40, 1.0)
    for fields in ({"temperature": 0.7, "top_k": 40, "seed": 3}, {"temperature": 0}):
        sampling = parse_completion({"model": "m", "prompt": "x", **fields}).sampling
        s = SamplingParams.from_dict(sampling)
        main, first = sampler_specs(s, sampling, (2,), no_empty=True)
        device = device_spec(s, sampling, grammar=False, logprobs=False)
        specs = (*(main or ()), *(first or ()), *(device or ()))
        assert device is not None and all(e[0] != "penalties" for e in specs)
        if s.greedy:
            assert main is None  # a numpy argmax on the row: no O(vocabulary) pass at all
            continue
        chain = build_chain(main, 49152)
        try:
            assert "penalties" not in chain_name(chain) and chain_name(chain).startswith("top-k,")
        finally:
            LL.llama_sampler_free(chain)


# ----------------------------------------------------------------------------- with the demo model
@pytest.fixture(scope="module")
def served(smollm2_path):
    slots: list[P.Slots] = []
    params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=2048, n_seq_max=SLOTS))
    with running_host(params, on_event=lambda m: slots.append(m) if isinstance(m, P.Slots) else None) as (
        host,
        loaded,
    ):
        model = ServedModel(host=lambda: host, loaded=lambda: loaded, slots=lambda: SLOTS)
        server = ApiServer(model, ServerConfig(port=0, max_queue=1))
        url = server.start()
        yield SimpleNamespace(url=url, host=host, loaded=loaded, slots=slots, model=model)
        server.stop()


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def healthy(url: str) -> dict:
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 200
    return r.json()


def ask(url: str, text: str, max_tokens: int = 8, **kw):
    return client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **kw
    )


@pytest.mark.slow
def test_models_and_chat_without_streaming(served):
    models = client(served.url).models.list()
    assert [m.id for m in models.data] == [MODEL]
    r = ask(served.url, "What is the capital of France?", temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.slow
def test_streaming_chat_matches_the_reply_and_counts_usage(served):
    kw = dict(temperature=0, max_tokens=10)
    whole = ask(served.url, "Name three colours.", **kw)
    stream = client(served.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.slow
def test_greedy_reply_equals_kvdeck_chat(served, smollm2_path):
    prompt, n = "Name three fruits.", 16
    r = kvdeck(
        "chat",
        str(smollm2_path),
        *("--prompt", prompt, "--max-tokens", str(n), "--json"),
        *("--temperature", "0", "--repeat-penalty", "1"),
    )
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    api = ask(served.url, prompt, max_tokens=n, temperature=0)
    assert api.choices[0].message.content == cli["text"]
    assert api.usage.completion_tokens == cli["n_tokens"]


@pytest.mark.slow
def test_seeded_reply_with_a_penalty_equals_kvdeck_chat(served, smollm2_path):
    """Both run the chain in llama.cpp's order with the prompt fed first (test_sampler_order)."""
    prompt, n = "List five animals.", 16
    knobs = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.3}
    flags = [x for k, v in knobs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = kvdeck(
        "chat", str(smollm2_path), "--prompt", prompt, "--max-tokens", str(n), "--json", *flags, "--seed", "5"
    )
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    api = ask(
        served.url,
        prompt,
        max_tokens=n,
        temperature=0.8,
        top_p=0.95,
        seed=5,
        extra_body={"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.3},
    )
    assert api.choices[0].message.content == cli["text"]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 11}])
def test_a_request_without_repeat_penalty_equals_one_with_repeat_penalty_1(served, sampling):
    prompt = "Count from 1 to 30, separated by commas."

    def reply(**extra) -> str:
        r = ask(served.url, prompt, max_tokens=32, extra_body=extra or None, **sampling)
        return r.choices[0].message.content

    default = reply()
    assert default == reply(repeat_penalty=1.0)
    assert default != reply(repeat_penalty=1.5)  # the field matters for this prompt


@pytest.mark.slow
def test_completions_with_stop_strings(served):
    c = client(served.url)
    plain = c.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0)
    assert plain.object == "text_completion" and plain.choices[0].text
    stop = plain.choices[0].text.strip()[:1]
    cut = c.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stop=[stop])
    assert stop not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stop=stop, stream=True
        )
        if ch.choices
    )
    assert streamed == cut.choices[0].text


@pytest.mark.slow
def test_concurrent_clients_all_complete(served):
    prompts = ["Say hi.", "Name a fruit.", "Name a colour.", "Count to three."]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = ask(served.url, prompts[i], max_tokens=6, temperature=0.7, seed=i)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]  # 2 slots + 1 waiting
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i in range(3):
        r = results[i]
        assert not isinstance(r, Exception), r
        assert r.choices[0].message.content.strip() and r.usage.completion_tokens > 0
    assert max(sum(1 for n in s.n_past if n) for s in served.slots) == SLOTS  # both sequences ran
    assert healthy(served.url)["in_flight"] == 0


def _open_stream(url: str, max_tokens: int = 400) -> tuple[httpx.Client, httpx.Response]:
    http = httpx.Client(timeout=300)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    resp = http.send(http.build_request("POST", f"{url}/v1/chat/completions", json=body), stream=True)
    return http, resp


def _wait(cond, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_disconnect_frees_the_sequence_and_a_full_queue_answers_429(served):
    streams = [_open_stream(served.url) for _ in range(SLOTS)]  # headers come after the prefill
    lines = [resp.iter_lines() for _, resp in streams]  # referenced: a dropped iterator hangs up
    try:
        for (_, resp), it in zip(streams, lines):
            assert resp.status_code == 200
            assert next(it).startswith("data: ")  # the role chunk: generating now
        queued: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: queued.update(r=ask(served.url, "Hi.", max_tokens=2)))
        waiter.start()
        assert _wait(lambda: healthy(served.url)["in_flight"] == SLOTS + 1)
        with pytest.raises(openai.RateLimitError) as info:  # slots busy and the queue (1) full
            ask(served.url, "Hi.", max_tokens=2)
        assert "busy" in info.value.message
    finally:
        for http, resp in streams:  # clients go away mid-stream
            resp.close()
            http.close()
    waiter.join(300)
    assert queued["r"].choices[0].message.content is not None  # the waiting one got a sequence
    assert _wait(lambda: healthy(served.url)["in_flight"] == 0)
    assert _wait(lambda: served.slots and not any(served.slots[-1].n_past))  # every sequence freed
    assert ask(served.url, "Say yes.", max_tokens=2).choices[0].message.content is not None


@pytest.mark.slow
def test_bad_requests_get_4xx_with_a_message_and_the_server_stays_up(served):
    url, c = served.url, client(served.url)
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    other = c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )  # any name: answered by the loaded model (issue 20)
    assert other.model == MODEL
    with pytest.raises(openai.BadRequestError) as neg:
        ask(url, "hi", max_tokens=-5)
    assert "max_tokens" in neg.value.message
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as long:  # fits the body limit, not a sequence
        ask(url, "hello " * 1500)
    assert long.value.body["code"] == "context_length_exceeded"
    for status, kw in ((400, dict(temperature=9)), (400, dict(n=99)), (400, dict(stop=["a"] * 5))):
        with pytest.raises(openai.APIStatusError) as bad:
            ask(url, "hi", **kw)
        assert bad.value.status_code == status and bad.value.message
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=b"model=x",
        timeout=30,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    r = httpx.get(f"{url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{url}/v1/models", headers={"Host": "attacker.example"}, timeout=30)
    assert r.status_code == 400  # DNS rebinding: a page's own host name is refused
    assert healthy(url)["status"] == "ok"
    assert ask(url, "Say ok.", max_tokens=2).choices[0].message.content is not None


@pytest.mark.slow
def test_api_key_is_enforced_except_on_health(served):
    server = ApiServer(served.model, ServerConfig(port=0, api_key="s3cret"))
    url = server.start()
    try:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert healthy(url)["status"] == "ok"
        assert [m.id for m in client(url, "s3cret").models.list().data] == [MODEL]
    finally:
        server.stop()


@pytest.mark.slow
def test_gui_server_toggle_serves_the_window_model_with_a_bar_per_sequence(
    qtbot, tmp_path, monkeypatch, smollm2_path
):
    from app.main_window import MainWindow
    from engine.core.memory_types import PlanSettings
    from engine.storage.identity import model_key
    from engine.storage.store import ChatStore

    monkeypatch.setenv("KVDECK_DEMO_MODEL", str(smollm2_path))
    store = ChatStore(tmp_path / "chat.sqlite3")
    store.set_model_settings(
        model_key(str(smollm2_path)), {"plan": PlanSettings(n_ctx=2048, n_seq_max=SLOTS).to_dict()}
    )
    win = MainWindow(store)
    qtbot.addWidget(win)
    win.show()
    bars: list[list[int]] = []
    win.bridge.kvSlots.connect(lambda used, cap: bars.append(list(used)))
    try:
        with qtbot.waitSignal(win.bridge.loaded, timeout=120_000):
            win.start()
        win.server_toggle.port = 0  # any free port: tests must not collide on 8080
        with qtbot.waitSignal(win.server_toggle.urlChanged, timeout=30_000) as sig:
            win.server_toggle.action.trigger()  # returns at once: uvicorn starts on its own thread
        url = sig.args[0]
        assert url.startswith("http://127.0.0.1:") and url in win.api_label.text()
        result: dict[str, object] = {}
        worker = threading.Thread(target=lambda: result.update(r=ask(url, "Say hi.", max_tokens=4)))
        worker.start()
        qtbot.waitUntil(lambda: not worker.is_alive(), timeout=120_000)  # the GUI keeps running
        assert result["r"].model == MODEL
        qtbot.waitUntil(lambda: any(len(b) == SLOTS and any(b) for b in bars), timeout=10_000)
        win.server_toggle.action.trigger()
        assert win.server_toggle.server is None and not win.api_label.text()
    finally:
        win.close()
        store.close()
