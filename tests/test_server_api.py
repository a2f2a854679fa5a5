"""The local API for real clients (issue 23): structured output, tools, logprobs, n, embeddings,
tokenize/detokenize, the memory view, any model name, per-slot prefix reuse and --overflow.

Driven over loopback with the official ``openai`` client (and httpx for llama-server's routes)
against SmolLM2-135M in a real runtime child; replies are validated with ``jsonschema``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import httpx
import jsonschema
import openai
import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.serve.server import ApiServer, ServedModel, ServerConfig
from engine.serve.tools import parse_calls
from tests.helpers.cli import kvdeck
from tests.helpers.runtime_host import running_host

SLOTS = 2
NAMES = ("get_weather", "search")


# ----------------------------------------------------------------------------- without a model
@pytest.mark.parametrize(
    "text, name, args",
    [
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
            "get_weather",
            {"city": "Oslo"},
        ),
        ('{"name": "search", "parameters": {"q": "x"}}', "search", {"q": "x"}),
        ('<|python_tag|>{"name": "search", "parameters": {"q": "x"}}', "search", {"q": "x"}),
        (
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]',
            "get_weather",
            {"city": "Rome"},
        ),
        ('[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}', "get_weather", {"city": "Rome"}),
        ('```tool_code\nget_weather(city="Paris")\n```', "get_weather", {"city": "Paris"}),
        ('[search(q="cats")]', "search", {"q": "cats"}),
        ('```json\n{"tool_calls": [{"name": "search", "arguments": {"q": "y"}}]}\n```', "search", {"q": "y"}),
    ],
)
def test_tool_call_formats_parse(text, name, args):
    content, calls = parse_calls(text, NAMES)
    assert len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == name and json.loads(calls[0]["function"]["arguments"]) == args
    assert content == ""


def test_plain_text_and_undeclared_functions_are_not_calls():
    assert parse_calls("Hello there.", NAMES) == ("Hello there.", [])
    text = '{"name": "rm_rf", "arguments": {}}'
    assert parse_calls(text, NAMES) == (text, [])


# ----------------------------------------------------------------------------- with SmolLM2
@pytest.fixture(scope="module")
def served(smollm2_path):
    latest: list[P.Slots] = []
    settings = PlanSettings(n_ctx=4096, n_seq_max=SLOTS)
    params = P.LoadParams(path=str(smollm2_path), settings=settings)
    with running_host(
        params, on_event=lambda m: latest.__setitem__(slice(None), [m]) if isinstance(m, P.Slots) else None
    ) as (host, loaded):
        model = ServedModel(
            host=lambda: host,
            loaded=lambda: loaded,
            slots=lambda: SLOTS,
            settings=lambda: settings,
            slots_state=lambda: latest[0] if latest else None,
        )
        server = ApiServer(model, ServerConfig(port=0, max_queue=4))
        url = server.start()
        yield SimpleNamespace(url=url, host=host, loaded=loaded)
        server.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def chat(url: str, content: str, **kw):
    return client(url).chat.completions.create(
        model=kw.pop("model", "gpt-4o"),
        messages=kw.pop("messages", [{"role": "user", "content": content}]),
        **kw,
    )


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}


@pytest.mark.slow
def test_any_model_name_is_answered_by_the_loaded_model(served):
    r = chat(served.url, "Hi", model="gpt-4o-mini", max_tokens=4, temperature=0)
    assert r.model == "SmolLM2-135M-Instruct.Q4_1" and r.choices[0].message.content
    m = client(served.url).models.retrieve("gpt-4o-mini")
    assert m.id == "SmolLM2-135M-Instruct.Q4_1" and "any model" in m.model_extra["kvdeck_note"]


@pytest.mark.slow
def test_json_schema_with_nested_objects_enums_and_arrays_validates(served):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in (1, 2):
        r = chat(
            served.url,
            "Describe a person as JSON.",
            response_format=fmt,
            max_tokens=200,
            temperature=0.8,
            seed=seed,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.slow
def test_json_object_parses_also_when_streamed(served):
    stream = chat(
        served.url,
        "Give me a JSON object about cats.",
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
        extra_body={"repeat_penalty": 1.1},  # greedy SmolLM2 loops without it, past max_tokens
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


@pytest.mark.slow
def test_bad_schemas_and_unknown_tools_get_400_in_openai_shape(served):
    bad = [
        dict(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        ),
        dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": [1, 2]}}),
        dict(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
            }
        ),
        dict(response_format={"type": "yaml"}),
        dict(
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
            tool_choice={"type": "function", "function": {"name": "launch_rockets"}},
        ),
        dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
    ]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as exc:
            chat(served.url, "Hi", max_tokens=4, **kw)
        err = exc.value.body
        assert exc.value.status_code == 400 and err["type"] == "invalid_request_error" and err["message"]
    assert httpx.get(f"{served.url}/health").status_code == 200


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string", "maxLength": 30}},
            "required": ["q"],
        },
    },
}


@pytest.mark.slow
def test_named_tool_call_from_smollm2_parses_and_validates_then_the_result_round_trips(served):
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    r = chat(
        served.url,
        "",
        messages=messages,
        tools=[WEATHER, SEARCH],
        max_tokens=80,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    r2 = chat(
        served.url,
        "",
        messages=messages,
        tools=[WEATHER, SEARCH],
        tool_choice="none",
        max_tokens=30,
        temperature=0,
    )
    assert r2.choices[0].finish_reason in ("stop", "length") and r2.choices[0].message.content
    assert not r2.choices[0].message.tool_calls


@pytest.mark.slow
def test_required_tool_call_streams_as_tool_call_deltas(served):
    stream = chat(
        served.url,
        "Search for cats.",
        tools=[WEATHER, SEARCH],
        tool_choice="required",
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].function.name in NAMES and calls[0].id
    args = json.loads(calls[0].function.arguments)
    schema = (WEATHER if calls[0].function.name == "get_weather" else SEARCH)["function"]["parameters"]
    jsonschema.validate(args, schema)


@pytest.mark.slow
def test_auto_tools_on_a_template_without_tool_support_is_a_clear_400(served):
    with pytest.raises(openai.BadRequestError) as exc:
        chat(served.url, "Weather in Oslo?", tools=[WEATHER], max_tokens=10)
    assert "tools are not supported for this model" in exc.value.body["message"]
    assert exc.value.body["code"] == "tools_not_supported"


@pytest.mark.slow
def test_logprobs_are_sane_for_chat_and_completions(served):
    r = chat(served.url, "Count to five.", logprobs=True, top_logprobs=3, max_tokens=8, temperature=0)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-6
        assert e.token == e.top_logprobs[0].token  # greedy: the sampled token is the most likely
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    c = client(served.url).completions.create(
        model="x", prompt="The sky is", max_tokens=5, logprobs=2, temperature=0.7, seed=3
    )
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == c.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) == 2 for t in lp.top_logprobs)
    stream = chat(served.url, "Hi", logprobs=True, max_tokens=5, temperature=0, stream=True)
    streamed = [
        e for ch in stream if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content
    ]
    assert streamed and all(e.logprob <= 0 for e in streamed)


@pytest.mark.slow
def test_n_choices_come_from_parallel_sequences(served):
    r = chat(served.url, "Write a word.", n=2, max_tokens=6, temperature=1.0, seed=5)
    assert [c.index for c in r.choices] == [0, 1] and all(c.message.content for c in r.choices)
    stream = chat(served.url, "Write a word.", n=2, max_tokens=6, temperature=1.0, seed=5, stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


@pytest.mark.slow
def test_tokenize_and_detokenize_like_llama_server(served):
    r = httpx.post(f"{served.url}/tokenize", json={"content": "Hello world"}).json()
    assert r["tokens"] and all(isinstance(t, int) for t in r["tokens"])
    back = httpx.post(f"{served.url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back["content"] == "Hello world"
    pieces = httpx.post(f"{served.url}/tokenize", json={"content": "Hello world", "with_pieces": True}).json()
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello world"
    bad = httpx.post(f"{served.url}/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_embeddings_of_a_chat_model_are_a_clear_400(served):
    with pytest.raises(openai.BadRequestError) as exc:
        client(served.url).embeddings.create(model="text-embedding-3-small", input="hello")
    assert "cannot make embeddings" in exc.value.body["message"]


@pytest.mark.slow
def test_timings_per_token_says_in_every_chunk_how_many_tokens_came_so_far(served):
    """llama-server's ``timings_per_token``: a chunk holds every token of about 20 ms, and says
    how many came up to it (benchmarks/server_vs_llama.py counts decode rates with it)."""
    body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 24, "stream": True}
    body |= {"temperature": 0, "timings_per_token": True, "stream_options": {"include_usage": True}}
    counts, usage = [], None
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                data = json.loads(line[6:])
                usage = data.get("usage") or usage
                if data["choices"]:
                    counts.append(data["timings"]["predicted_n"])
    assert counts == sorted(counts) and counts[0] >= 1 and usage is not None
    assert counts[-1] == usage["completion_tokens"]


@pytest.mark.slow
def test_memory_view_has_plan_measured_sequences_and_live_memory(served):
    chat(served.url, "Hi", max_tokens=2)
    r = httpx.get(f"{served.url}/v1/kvdeck/memory", timeout=60)
    assert r.status_code == 200
    data = r.json()
    assert data["plan"]["devices"] and data["measured"]["devices"]
    assert data["load_mode"] == "mmap"  # the default: the file mapped (test_server: --load-mode none)
    assert len(data["sequences"]) == SLOTS and all(0 <= s["fill"] <= 1 for s in data["sequences"])
    loop = data["batch_loop"]  # where the batch loop's time went: decode, sampling, the rest
    assert (
        loop["steps"] > 0 and 0 < loop["decode_s"] and loop["decode_s"] + loop["sample_s"] <= loop["busy_s"]
    )
    # the steps of generated tokens only (the second token of the reply), as batched-bench times them
    assert 0 < loop["gen_steps"] < loop["steps"] and 0 < loop["gen_decode_s"] < loop["decode_s"]
    assert 0 < loop["gen_sample_s"] <= loop["sample_s"] and 0 < loop["reorder_s"] <= loop["sample_s"]
    assert data["live"]["host"] and "gpus" in data["live"]


@pytest.mark.slow
def test_a_shared_system_prompt_is_not_prefilled_again(served):
    system = "You are a careful assistant. " * 60
    events: list[P.Message] = []

    def ask(q: str) -> P.Done:
        return served.host.call(
            "generate",
            lambda i: P.GenerateRequest(
                id=i,
                prompt=f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n",
                max_tokens=4,
                sampling={"temperature": 0},
                serve=True,
            ),
            on_event=events.append,
        )

    first = ask("What is 2+2?")
    second = ask("Name a colour.")
    assert first.n_prompt > 300
    assert second.n_reused >= first.n_prompt - 20  # all but the question's own tokens


@pytest.mark.slow
def test_cli_chat_json_schema_constrains_the_reply(tmp_path, smollm2_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    r = kvdeck(
        "chat",
        str(smollm2_path),
        "--prompt",
        "A person as JSON.",
        "--json-schema",
        str(schema),
        "--json",
        "--max-tokens",
        "200",
        "--temperature",
        "0",
    )
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(json.loads(r.stdout)["text"]), PERSON)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = kvdeck("chat", str(smollm2_path), "--prompt", "x", "--json-schema", str(bad))
    assert r.returncode != 0 and "must be a JSON object" in r.stderr


@pytest.mark.slow
def test_overflow_policy_fits_long_chats_instead_of_400(served):
    turns = []
    for k in range(24):
        turns += [
            {"role": "user", "content": f"Tell me fact number {k} about rivers. " * 8},
            {"role": "assistant", "content": f"Fact {k}: rivers flow downhill to the sea. " * 8},
        ]
    turns.append({"role": "user", "content": "Summarise."})
    with pytest.raises(openai.BadRequestError) as exc:
        chat(served.url, "", messages=turns, max_tokens=4)
    assert exc.value.body["code"] == "context_length_exceeded"
    model = ServedModel(host=lambda: served.host, loaded=lambda: served.loaded, slots=lambda: SLOTS)
    for policy, ok in (("rolling", True), ("middle", True), ("stop", False)):
        server = ApiServer(model, ServerConfig(port=0, overflow=policy))
        url = server.start()
        try:
            if ok:
                r = chat(url, "", messages=turns, max_tokens=4, temperature=0)
                assert (
                    r.choices[0].message.content is not None
                    and r.usage.prompt_tokens < served.loaded.n_ctx_seq
                )
            else:
                with pytest.raises(openai.BadRequestError) as exc:
                    chat(url, "", messages=turns, max_tokens=4)
                assert exc.value.body["code"] == "context_length_exceeded"
        finally:
            server.stop()


# ----------------------------------------------------------------------------- an embedding model
@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A tiny synthetic llama GGUF (random weights, benchmarks/synthetic_gguf.py) whose metadata
    declares mean pooling: llama.cpp pools any architecture's hidden states when told to."""
    import gguf

    from benchmarks.synthetic_gguf import write_gguf

    class Pooled(gguf.GGUFWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_pooling_type(gguf.PoolingType.MEAN)

    path = tmp_path_factory.mktemp("embed") / "tiny-mean-pooled.gguf"
    real, gguf.GGUFWriter = gguf.GGUFWriter, Pooled
    try:
        write_gguf(path, "tiny")
    finally:
        gguf.GGUFWriter = real
    params = P.LoadParams(path=str(path), settings=PlanSettings(n_ctx=1024, n_seq_max=1))
    with running_host(params) as (host, loaded):
        model = ServedModel(host=lambda: host, loaded=lambda: loaded, slots=lambda: 1)
        server = ApiServer(model, ServerConfig(port=0))
        yield server.start()
        server.stop()


@pytest.mark.slow
def test_embeddings_are_pooled_normalised_and_deterministic(embedder):
    c = client(embedder)
    r = c.embeddings.create(
        model="text-embedding-3-small", input=["a red apple", "a red apple", "quantum field"]
    )
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and len(vecs[0]) == 256 and r.usage.prompt_tokens > 3
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)
    assert vecs[0] == pytest.approx(vecs[1], abs=1e-6)
    assert max(abs(a - b) for a, b in zip(vecs[0], vecs[2])) > 1e-3
    one = c.embeddings.create(model="x", input="a red apple", encoding_format="base64")
    assert isinstance(one.data[0].embedding, (str, list))
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="x", input="")


@pytest.mark.slow
def test_a_model_without_chat_template_refuses_tools_in_words(gemma3_path):
    params = P.LoadParams(path=str(gemma3_path), settings=PlanSettings(n_ctx=1024, n_seq_max=1))
    with running_host(params) as (host, loaded):
        server = ApiServer(
            ServedModel(host=lambda: host, loaded=lambda: loaded, slots=lambda: 1), ServerConfig(port=0)
        )
        url = server.start()
        try:
            with pytest.raises(openai.BadRequestError) as exc:
                chat(url, "Weather?", tools=[WEATHER], tool_choice="required", max_tokens=8)
            assert "no chat template" in exc.value.body["message"]
            r = chat(
                url,
                "Weather?",
                max_tokens=30,
                temperature=0,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": SEARCH["function"]["parameters"]},
                },
            )
            jsonschema.validate(json.loads(r.choices[0].message.content), SEARCH["function"]["parameters"])
        finally:
            server.stop()
