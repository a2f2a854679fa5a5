"""The server drafts per sequence (issue 19): with several sequences live in the batch loop, each
drafts from its own MTP state, the target verifies every sequence's drafts in the step's one
batch, and each sequence keeps or cuts back its own cells. Random-weight models: greedy identity
with the non-drafting batch loop is the specification; acceptance itself means nothing here.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from engine import protocol as P
from engine.core.memory_types import PlanSettings
from engine.core.sampling import SamplingParams
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.plan.drafting import drafting_plan
from engine.runtime.info import plan_devices
from engine.serve.server import ApiServer, ServedModel, ServerConfig
from tests.helpers import mtp_models as mm
from tests.helpers.burst import held_burst
from tests.helpers.cli import kvdeck
from tests.helpers.runtime_host import running_host

GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
PROMPTS = [" ".join(f"w{(p * 7 + i) % 61}" for i in range(3 + p)) for p in range(4)]
SLOTS = 3


def _request(prompt: str, draft: str, sampling: dict = GREEDY, logprobs: int = -1):
    return lambda i: P.GenerateRequest(
        id=i,
        prompt=prompt,
        max_tokens=96,
        sampling=sampling,
        serve=True,
        draft=draft,
        draft_max=4,
        logprobs=logprobs,
    )


def _replies(host, draft: str, sampling: dict = GREEDY, logprobs: int = -1) -> list[P.Done]:
    builds = [_request(p, draft, sampling, logprobs) for p in PROMPTS]
    _ids, replies, _b = held_burst(host, builds, n_prompt=64)
    assert all(isinstance(d, P.Done) for d in replies), replies
    return replies  # type: ignore[return-value]


def _settings(**kw) -> PlanSettings:
    return PlanSettings(n_ctx=256 * SLOTS, n_seq_max=SLOTS, n_batch=64, n_ubatch=64, **kw)


@pytest.mark.parametrize(
    "model,k,extra",
    [("hyv3", 3, {}), ("hyv3-1", 4, {}), ("qwen35", 3, {"n_rs_seq": 4})],
    ids=["chained heads (hy_v3)", "single head (hy_v3)", "hybrid target rolling back per sequence (qwen35)"],
)
def test_concurrent_requests_draft_per_sequence_and_keep_the_plain_output(tmp_path, model, k, extra):
    """k: draft positions (one per chained head; n_rs_seq - 1 on a hybrid target; else draft_max)."""
    if model == "qwen35":
        path = mm.write_qwen35(tmp_path / "t.gguf")
    else:
        path = mm.write_hyv3(tmp_path / "t.gguf", n_nextn=3 if model == "hyv3" else 1)
    with running_host(P.LoadParams(str(path), settings=_settings(mtp=True, **extra))) as (host, loaded):
        assert loaded.mtp == "ready"
        plain = _replies(host, "")
        fast = _replies(host, "mtp")
        seeded = {"temperature": 0.8, "repeat_penalty": 1.1, "seed": 3}
        sampled = _replies(host, "mtp", seeded)
        sampled_plain = _replies(host, "", seeded)
        lp_plain, lp_fast = _replies(host, "", logprobs=2), _replies(host, "mtp", logprobs=2)
    for f, p in zip(lp_fast, lp_plain):  # each token's log-probabilities from its own verify row
        assert f.tokens == p.tokens and f.n_drafted > 0
        assert [e["id"] for e in f.logprobs] == [e["id"] for e in p.logprobs]
        assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(f.logprobs, p.logprobs)) < 1e-3
    assert [d.tokens for d in fast] == [d.tokens for d in plain]
    assert [d.tokens for d in sampled] == [d.tokens for d in sampled_plain]  # the chain samples each row
    for d in fast:
        assert d.draft == "mtp" and len(d.drafted_at) == k
        assert d.n_drafted == sum(d.drafted_at) > 0 and d.n_accepted == sum(d.accepted_at)
    assert all(d.tokens and d.n_drafted > 0 for d in sampled)
    drafted, accepted = (
        [sum(x) for x in zip(*col)] for col in ([d.drafted_at for d in fast], [d.accepted_at for d in fast])
    )
    print("\nacceptance by position", drafted, accepted)


def test_a_gemma4_assistant_drafts_per_sequence_from_the_shared_kv(tmp_path):
    target, assistant = (
        mm.write_gemma4_target(tmp_path / "g4.gguf"),
        mm.write_gemma4_assistant(tmp_path / "a.gguf"),
    )
    with running_host(P.LoadParams(str(target), settings=_settings())) as (host, _loaded):
        plain = _replies(host, "")
        host.load_draft(str(assistant))
        fast = _replies(host, "model")
        _ids, refused, _b = held_burst(host, [_request(PROMPTS[0], "mtp")], n_prompt=64)
    assert isinstance(refused[0], P.ErrorEvent) and "cannot draft for itself" in refused[0].message
    assert [d.tokens for d in fast] == [d.tokens for d in plain]
    assert all(d.draft == "model" and d.n_drafted > 0 for d in fast)


def _complete(url: str, prompts: list[str]) -> list[dict]:
    """Every prompt at once, one client thread each (greedy, through the HTTP API)."""
    out: dict[int, dict] = {}

    def run(i: int) -> None:
        body = {"model": "m", "prompt": prompts[i], "max_tokens": 48, "temperature": 0}
        out[i] = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return [out[i] for i in range(len(prompts))]


def _served(host, loaded, settings, draft: str, draft_path: str = "") -> ApiServer:
    served = ServedModel(
        lambda: host,
        lambda: loaded,
        lambda: SLOTS,
        settings=lambda: settings,
        draft=draft,
        draft_max=3,
        draft_path=draft_path,
    )
    return ApiServer(served, ServerConfig(port=0))


def _expected_drafter_plan(target: str, settings: PlanSettings, assistant: str | None = None) -> dict:
    """What ``kvdeck plan --mtp`` / ``--draft ASSISTANT`` plans for the drafting context."""
    info, devices = inspect_gguf(target), plan_devices()[0]
    a = inspect_gguf(assistant) if assistant else None
    plan = drafting_plan(info, analytic_plan(info, settings, devices), devices, a, settings.n_gpu_layers)
    return plan.to_json()["devices"]


def _summed(replies: list[dict], key: str) -> list[int]:
    rows = [r["usage"]["kvdeck_drafting"][key] for r in replies]
    return [sum(row[i] for row in rows if i < len(row)) for i in range(max(map(len, rows)))]


def test_the_server_drafts_per_sequence_and_reports_acceptance_by_position(tmp_path):
    """``kvdeck serve --mtp``'s path: the same host behind a drafting and a plain API server;
    /v1/kvdeck/memory shows the drafting context's plan and the acceptance of every reply so far."""
    path = mm.write_hyv3(tmp_path / "t.gguf")
    settings = PlanSettings(n_ctx=256 * SLOTS, n_seq_max=SLOTS, n_batch=64, n_ubatch=64, mtp=True)
    with running_host(P.LoadParams(str(path), settings=settings)) as (host, loaded):
        servers = [_served(host, loaded, settings, draft) for draft in ("", "mtp")]
        try:
            urls = [s.start() for s in servers]
            plain, fast = (_complete(url, PROMPTS[:SLOTS]) for url in urls)
            plain_memory, memory = (httpx.get(f"{url}/v1/kvdeck/memory", timeout=60).json() for url in urls)
        finally:
            for s in servers:
                s.stop()
    assert [r["choices"][0]["text"] for r in fast] == [r["choices"][0]["text"] for r in plain]
    for r in fast:
        d = r["usage"]["kvdeck_drafting"]
        assert (
            d["draft"] == "mtp" and len(d["drafted_at"]) == 3 and d["drafted_tokens"] == sum(d["drafted_at"])
        )
        assert len(d["acceptance_by_position"]) == 3
    assert all("kvdeck_drafting" not in r["usage"] for r in plain)

    drafting = memory["drafting"]
    assert plain_memory["drafting"] is None
    assert drafting["draft"] == "mtp" and drafting["draft_max"] == 3
    assert drafting["drafted_at"] == _summed(fast, "drafted_at")
    assert drafting["accepted_at"] == _summed(fast, "accepted_at")
    assert len(drafting["acceptance_by_position"]) == 3
    per_device = drafting["plan"]["devices"]
    assert per_device == _expected_drafter_plan(str(path), settings)
    # their own KV, compute and output; the MTP blocks' weights add nothing to a mapped load
    # here (they lie inside the file's span of the trunk's tensors: engine.plan.weights)
    cpu = per_device["CPU"]
    assert cpu["weights"] == 0 and cpu["kv"] > 0 and cpu["compute"] > 0 and cpu["output"] > 0


def test_the_memory_route_shows_a_gemma4_assistants_context_without_kv(tmp_path):
    target = str(mm.write_gemma4_target(tmp_path / "g4.gguf"))
    assistant = str(mm.write_gemma4_assistant(tmp_path / "g4a.gguf"))
    settings = PlanSettings(n_ctx=256 * SLOTS, n_seq_max=SLOTS, n_batch=64, n_ubatch=64)
    with running_host(P.LoadParams(target, settings=settings)) as (host, loaded):
        host.load_draft(assistant)
        server = _served(host, loaded, settings, "model", assistant)
        try:
            url = server.start()
            fast = _complete(url, PROMPTS[:SLOTS])
            drafting = httpx.get(f"{url}/v1/kvdeck/memory", timeout=60).json()["drafting"]
        finally:
            server.stop()
    assert drafting["draft"] == "model" and drafting["drafted_at"] == _summed(fast, "drafted_at")
    per_device = drafting["plan"]["devices"]
    assert per_device == _expected_drafter_plan(target, settings, assistant)
    assert per_device["CPU"]["kv"] == 0 and per_device["CPU"]["weights"] > 0  # it reads the target's K/V


def test_serve_refuses_drafters_it_cannot_run_per_sequence_in_one_line(tmp_path):
    plain = mm.write_hyv3(tmp_path / "plain.gguf", n_nextn=0)
    heads = mm.write_hyv3(tmp_path / "heads.gguf")
    for args, words in (
        (["--mtp", str(plain)], "no MTP (nextn) layers"),
        (["--draft", str(heads), str(plain)], "separate draft model"),
    ):
        r = kvdeck("serve", "--port", "0", *args)
        assert r.returncode != 0 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_drafting_after_a_reply_made_without_it_restarts_the_drafters_cache(tmp_path):
    """A plain single-sequence reply does not feed the drafter, so after draft / plain / draft
    the drafter's cache ends before the reused prefix (here at 51 of 132 positions), and
    llama.cpp refuses a batch whose positions do not follow the cache's ("Y = X + 1"). The
    drafter restarts that sequence instead, and the reply is the plain one."""
    path = mm.write_hyv3(tmp_path / "t.gguf")
    greedy = SamplingParams.from_dict(GREEDY)
    settings = PlanSettings(n_ctx=512, n_batch=64, n_ubatch=64, mtp=True)  # one sequence
    with running_host(P.LoadParams(str(path), settings=settings)) as (host, _loaded):
        text = PROMPTS[3]
        text += host.generate(text, max_tokens=16, sampling=greedy, draft="mtp").text
        text += host.generate(text, max_tokens=24, sampling=greedy).text
        plain = host.generate(text, max_tokens=24, sampling=greedy)
        fast = host.generate(text, max_tokens=24, sampling=greedy, draft="mtp")
        again = _replies(host, "mtp")  # and the batch loop after all of them
    assert fast.tokens == plain.tokens and fast.n_reused > 0 and fast.n_drafted > 0
    assert all(d.n_drafted > 0 for d in again)


@pytest.mark.parametrize(
    "draft", ["mtp", "lookup", "model"], ids=["MTP heads", "n-gram lookup", "a separate draft model"]
)
def test_the_windows_drafting_runs_on_the_sequence_holding_its_prefix(tmp_path, draft):
    """A window reply (not the server's) on a context of two sequences drafts, with the MTP heads,
    by n-gram lookup or with a draft model (here the target itself), on the sequence that holds
    its prefix, here sequence 1: the greedy tokens are the plain reply's, and sequence 0's cells
    are left as they were. (The window's drafting used to run the single-sequence loop on
    sequence 0 whatever the context, cutting that sequence's cache back to the prompt's shared
    first token.)"""
    path = mm.write_hyv3(tmp_path / "t.gguf")
    greedy = SamplingParams.from_dict(GREEDY)
    slots: list[P.Slots] = []
    settings = PlanSettings(n_ctx=512, n_seq_max=2, n_batch=64, n_ubatch=64, mtp=draft == "mtp")
    with running_host(
        P.LoadParams(str(path), settings=settings),
        on_event=lambda m: slots.append(m) if isinstance(m, P.Slots) else None,
    ) as (host, _loaded):
        if draft == "model":
            host.load_draft(str(path))
        window = [
            lambda i, p=p: P.GenerateRequest(id=i, prompt=p, max_tokens=24, sampling=GREEDY)
            for p in PROMPTS[2:]
        ]
        _ids, (on_0, on_1), _b = held_burst(host, window, n_prompt=64)  # one on each sequence
        before = host.stats()  # sequence 0's cells
        text = PROMPTS[3] + on_1.text + " w5 w9"
        plain = host.generate(text, max_tokens=32, sampling=greedy)
        fast_id: list[int] = []
        fast = host.generate(
            text,
            max_tokens=32,
            sampling=greedy,
            draft=draft,
            draft_max=3,
            on_event=lambda m: fast_id.append(m.id) if isinstance(m, P.Started) else None,
        )
        after = host.stats()
    assert on_0.tokens and on_1.tokens
    assert fast.tokens == plain.tokens and fast.n_drafted > 0 and fast.n_reused > 0
    if draft == "model":  # the target drafting for itself: its caught-up cache guesses right
        assert fast.n_accepted >= 0.9 * fast.n_drafted, (fast.n_accepted, fast.n_drafted)
    assert any(s.requests[1] == fast_id[0] for s in slots)  # it ran on sequence 1
    assert (after.kv_pos_min, after.kv_pos_max, after.n_cached_tokens) == (
        before.kv_pos_min,
        before.kv_pos_max,
        before.n_cached_tokens,
    )
    assert before.kv_pos_max > 0
