"""Beyond one machine: llama.cpp RPC workers (`kvdeck worker`, `--rpc`), on loopback.

Two workers run as separate processes on 127.0.0.1, each lending this machine's CPU; the
runtime child splits SmolLM2 across them and the local host. What must hold: the same greedy
reply as a local run, a plan that says what llama.cpp allocated on each worker, a fit that keeps
a small worker within its budget and names the machine that limited it, a worker that dies in
the middle of a reply named in one line with the reply finished without it, and a worker that
cannot be used refused in one line before anything loads.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.child.rpc_lost import lost_endpoints
from engine.core.errors import KvDeckError
from engine.core.memory_types import MiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.protocol import LoadParams
from engine.runtime.exact_plan import plan_from_log
from engine.runtime.info import plan_devices
from engine.runtime.workers import PROTOCOL, parse_endpoints, probe
from tests.helpers.cli import ROOT, kvdeck, spawn_kvdeck
from tests.helpers.rpc_workers import DroppingProxy, FakeServer, free_port, needs_rpc, workers
from tests.helpers.runtime_host import running_host

GREEDY = ["--temperature", "0", "--seed", "1"]


def _chat(model: Path, *extra: str) -> dict[str, object]:
    out = kvdeck(
        "chat", str(model), "--prompt", "Name three colors.", "--max-tokens", "24", "--json", *GREEDY, *extra
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_rpc
def test_a_model_split_across_two_workers_answers_exactly_as_the_local_run(smollm2_path: Path) -> None:
    local = _chat(smollm2_path)
    with workers(2) as ws:
        split = _chat(smollm2_path, "--rpc", ",".join(w.endpoint for w in ws))
    assert split["tokens"] == local["tokens"]
    assert split["text"] == local["text"]


@needs_rpc
def test_the_plan_says_what_llama_cpp_allocated_on_each_worker(smollm2_path: Path) -> None:
    with workers(2) as ws:
        rpc = tuple(w.endpoint for w in ws)
        devices = plan_devices(rpc=rpc)[0]
        remote = [d.name for d in devices if d.endpoint]
        assert remote == [f"RPC0[{e}]" for e in rpc]  # llama.cpp's buffer names
        info = inspect_gguf(str(smollm2_path))
        from engine.plan.fit import pin_split

        settings = pin_split(PlanSettings(n_ctx=2048, type_k="f16", type_v="f16"), devices)
        predicted = analytic_plan(info, settings, devices)
        with running_host(LoadParams(str(smollm2_path), settings), rpc=rpc) as (_host, loaded):
            assert loaded is not None
            measured = plan_from_log(loaded.memory_log, settings, "measured")
    for dev in remote:
        assert measured.bytes_for(dev, "weights") > 0, f"no layers went to {dev}"
        for component in ("weights", "kv"):  # exact, to the 0.01 MiB the log prints
            error = predicted.bytes_for(dev, component) - measured.bytes_for(dev, component)
            assert abs(error) <= 0.01 * MiB, (dev, component, error)
        assert measured.bytes_for(dev, "compute") > 0
    for dev in measured.devices():  # a stated bound for CPU-backed workers: never under
        assert predicted.bytes_for(dev, "compute") >= measured.bytes_for(dev, "compute") - 0.01 * MiB, dev


@needs_rpc
def test_fit_keeps_a_small_worker_within_its_budget_and_names_it(smollm2_path: Path) -> None:
    with workers(2) as ws:
        big, small = ws
        out = kvdeck(
            "fit",
            str(smollm2_path),
            "--rpc",
            f"{big.endpoint},{small.endpoint}",
            "--budget-mib",
            f"{big.endpoint}=400,{small.endpoint}=120",
            "--margin-mib",
            "0",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        chosen = PlanSettings(
            n_ctx=data["n_ctx"],
            n_gpu_layers=data["n_gpu_layers"],
            tensor_split=tuple(data["tensor_split"]),
            type_k=data["plan"]["type_k"],
            type_v=data["plan"]["type_v"],
        )
        with running_host(LoadParams(str(smollm2_path), chosen), rpc=(big.endpoint, small.endpoint)) as (
            _h,
            loaded,
        ):
            assert loaded is not None
            measured = plan_from_log(loaded.memory_log, chosen, "measured")
    used = {row["name"]: row["total"] for row in data["plan"]["devices"]}
    budget = {big.endpoint: 400 * MiB, small.endpoint: 120 * MiB}
    for endpoint, mib in budget.items():
        assert used.get(f"RPC0[{endpoint}]", 0) <= mib  # as planned
        assert measured.bytes_for(f"RPC0[{endpoint}]") <= mib  # and as llama.cpp allocated it
    assert measured.bytes_for(f"RPC0[{big.endpoint}]", "weights") > 0
    assert data["n_gpu_layers"] < 31  # the workers, not the model, set the number of layers
    assert "layers offloaded, as one more would overfill RPC0[" in data["reason"]
    assert "on the worker at 127.0.0.1:" in data["reason"]


@needs_rpc
@pytest.mark.parametrize("drafted", [False, True], ids=["plain", "with-a-draft-model"])
def test_a_worker_killed_mid_reply_is_named_and_the_reply_finishes_without_it(
    smollm2_path: Path, drafted: bool
) -> None:
    """With ``--draft`` the draft model went with the runtime too: it is loaded again and the
    reply goes on drafting."""
    with workers(2) as ws:
        doomed = ws[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvdeck", "chat", str(smollm2_path), "--max-tokens", "160", *GREEDY]
            + ["--prompt", "Write a long story about a dragon who learns to bake bread."]
            + ["--rpc", ",".join(w.endpoint for w in ws)]
            + (["--draft", str(smollm2_path)] if drafted else []),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # the reply has started: the runtime is decoding on both workers
        assert first, proc.stderr.read() if proc.stderr else ""
        os.kill(doomed.pid or 0, signal.SIGKILL)
        rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    notes = [ln for ln in err.decode().splitlines() if "went away" in ln]
    assert notes == [f"worker {doomed.endpoint} went away while decoding; the reply goes on without it"]
    reply = (first + rest).decode()
    assert len(reply.split()) > 20  # the partial reply was kept and the rest was written after it
    assert ("model drafting:" in err.decode()) == drafted


@needs_rpc
@pytest.mark.parametrize("doomed", [2, 1], ids=["last", "middle"])
def test_chat_reloads_without_a_lost_worker_with_the_users_own_tensor_split(
    smollm2_path: Path, tmp_path: Path, doomed: int
) -> None:
    """The reload after a lost worker keeps every option the user gave, as serve's does: with
    ``--tensor-split 1,3,1`` over three workers, each load puts on each worker the weights the
    plan gives it for that split on the workers of the moment, the reload's too. Each ratio stays
    with its worker: when the middle one goes, the other two keep one share each (by position,
    the last would take the lost worker's three); a split pinned by free memory would share the
    layers about evenly (they lend one machine)."""
    ratios = (1.0, 3.0, 1.0)
    with workers(3) as ws:
        rpc = [w.endpoint for w in ws]
        left = [e for i, e in enumerate(rpc) if i != doomed]
        kept = tuple(r for i, r in enumerate(ratios) if i != doomed)
        planned = [
            _weights_planned(smollm2_path, PlanSettings(tensor_split=ratios), rpc),
            _weights_planned(smollm2_path, PlanSettings(tensor_split=kept), left),
        ]
        by_position = _weights_planned(smollm2_path, PlanSettings(tensor_split=ratios[:2]), left)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvdeck", "chat", str(smollm2_path), "--max-tokens", "160", *GREEDY]
            + ["--prompt", "Write a long story about a dragon who learns to bake bread."]
            + ["--rpc", ",".join(rpc), "--tensor-split", "1,3,1"],
            cwd=ROOT,
            env={**os.environ, "KVDECK_DATA_DIR": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # the reply has started: the runtime is decoding on all three
        assert first, proc.stderr.read() if proc.stderr else ""
        os.kill(ws[doomed].pid or 0, signal.SIGKILL)
        _rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert f"worker {rpc[doomed]} went away" in err.decode()
    assert _weights_loaded(tmp_path / "kvdeck.log", rpc) == planned
    if doomed == 1:  # what keeping the ratios by position would have loaded differs
        assert planned[1] != by_position


def _weights_planned(model: Path, settings: PlanSettings, rpc: list[str]) -> dict[str, float]:
    """Per worker, the MiB of weights the plan puts there, to the 0.01 MiB llama.cpp's log prints."""
    plan = analytic_plan(inspect_gguf(str(model)), settings, plan_devices(rpc=tuple(rpc))[0])
    return {e: round(plan.bytes_for(f"RPC0[{e}]", "weights") / MiB, 2) for e in rpc}


def _weights_loaded(log: Path, rpc: list[str]) -> list[dict[str, float]]:
    """Per load, the MiB of weights on each worker it used, from llama.cpp's ``load_tensors:
    RPC0[HOST:PORT] model buffer size = N MiB`` lines in the log file."""
    loads: list[dict[str, float]] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if m := re.search(r"load_tensors:\s+RPC0\[(.+?)\] model buffer size =\s+([\d.]+) MiB", line):
            if not loads or m[1] in loads[-1]:  # a worker seen again: the next load
                loads.append({})
            loads[-1][m[1]] = float(m[2])
    assert all(set(load) <= set(rpc) for load in loads), loads
    return loads


@needs_rpc
def test_a_worker_that_drops_the_connection_mid_reply_but_keeps_listening_is_named(
    smollm2_path: Path,
) -> None:
    """ggml-rpc's abort names nobody and the worker still accepts connections: the child names
    the worker whose connection it found closed, and the reply finishes without it."""
    with workers(2) as ws:
        proxy = DroppingProxy(ws[1].endpoint)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvdeck", "chat", str(smollm2_path), "--max-tokens", "160", *GREEDY]
                + ["--prompt", "Write a long story about a dragon who learns to bake bread."]
                + ["--rpc", f"{ws[0].endpoint},{proxy.endpoint}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None
            first = proc.stdout.read(1)  # the reply has started on both workers
            assert first, proc.stderr.read() if proc.stderr else ""
            proxy.drop()
            rest, err = proc.communicate(timeout=300)
        finally:
            proxy.close()
    assert proc.returncode == 0, err.decode()
    notes = [ln for ln in err.decode().splitlines() if "went away" in ln]
    assert notes == [f"worker {proxy.endpoint} went away while decoding; the reply goes on without it"]
    assert len((first + rest).decode().split()) > 20


def test_a_connection_the_worker_reset_is_named_though_it_has_no_peer_name_left() -> None:
    """A worker that hung up answers our next write with a reset (so does one that closes with
    our command unread): the socket is then in TCP state CLOSE, getpeername refuses it, and it
    is still the connection the abort hook must name, beside an idle one that is not."""
    gone = FakeServer(version=None)  # closes every connection at once
    idle = socket.create_server(("127.0.0.1", 0))  # takes the connection into its backlog, never answers
    idle_endpoint = f"127.0.0.1:{idle.getsockname()[1]}"
    host, _, port = gone.endpoint.rpartition(":")
    try:
        with (
            socket.create_connection((host, int(port))) as dropped,
            socket.create_connection(idle.getsockname()),
        ):
            poll = select.poll()
            poll.register(dropped, select.POLLRDHUP)
            assert poll.poll(30_000), "the worker's end of stream never came"
            dropped.send(b"\0")  # as ggml-rpc's next command would
            poll.register(dropped, select.POLLHUP)
            assert poll.poll(30_000), "the reset never came"
            with pytest.raises(OSError):
                dropped.getpeername()
            assert lost_endpoints([idle_endpoint, gone.endpoint]) == [gone.endpoint]
    finally:
        gone.close()
        idle.close()


@needs_rpc
def test_a_port_with_nothing_listening_is_refused_in_one_line_before_loading(smollm2_path: Path) -> None:
    port = free_port()
    out = kvdeck("chat", str(smollm2_path), "--prompt", "hi", "--rpc", f"127.0.0.1:{port}")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == f"error: worker 127.0.0.1:{port} refused the connection: nothing is listening there"
    )


def test_a_worker_of_another_protocol_version_is_refused_in_words() -> None:
    old = FakeServer(version=(3, 0, 0))
    try:
        with pytest.raises(KvDeckError) as err:
            probe(old.endpoint)
    finally:
        old.close()
    assert str(err.value) == (
        f"worker {old.endpoint} speaks RPC protocol 3.0.0 but this runtime speaks "
        f"{'.'.join(map(str, PROTOCOL))}: run the same llama.cpp version on both machines"
    )


def test_a_worker_that_drops_the_connection_is_refused_in_words() -> None:
    rude = FakeServer(version=None)
    try:
        with pytest.raises(KvDeckError, match="closed the connection during the handshake"):
            probe(rude.endpoint)
    finally:
        rude.close()


@pytest.mark.parametrize(
    ("text", "words"),
    [("10.0.0.5", "is not HOST:PORT"), ("10.0.0.5:0", "is not HOST:PORT"), (":50052", "is not HOST:PORT")],
)
def test_endpoints_are_read_as_llama_cpp_reads_them(text: str, words: str) -> None:
    with pytest.raises(KvDeckError, match=words):
        parse_endpoints(text)
    assert parse_endpoints("10.0.0.5:50052, 10.0.0.6:50052,10.0.0.5:50052") == (
        "10.0.0.5:50052",
        "10.0.0.6:50052",
    )


@needs_rpc
def test_kvdeck_worker_lends_the_cpu_and_refuses_a_taken_port() -> None:
    with workers(1) as (w,):
        assert [d.name for d in w.devices] == ["CPU"]
        assert w.devices[0].free_bytes > 0
        info = probe(w.endpoint)
        assert info.version == PROTOCOL and len(info.devices) == 1
        out = kvdeck("worker", "--port", str(w.port), timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: port {w.port} on 127.0.0.1 is already in use (another worker?)"


def test_a_worker_beyond_loopback_is_warned_about_in_words() -> None:
    from engine.runtime.worker_process import exposure_warning

    assert exposure_warning("127.0.0.1") == ""
    assert "anyone who can reach the port" in exposure_warning("0.0.0.0")


@needs_rpc
def test_plan_and_bench_take_rpc_like_chat(smollm2_path: Path) -> None:
    with workers(2) as ws:
        rpc = ",".join(w.endpoint for w in ws)
        plan = kvdeck("plan", str(smollm2_path), "--rpc", rpc, "--json")
        bench = kvdeck(
            "bench", str(smollm2_path), "--rpc", rpc, "--pp", "16", "--tg", "4", "--reps", "1", "--json"
        )
    assert plan.returncode == 0, plan.stderr
    names = [row["name"] for row in json.loads(plan.stdout)["devices"]]
    assert [n for n in names if n.startswith("RPC")] == [f"RPC0[{w.endpoint}]" for w in ws]
    assert bench.returncode == 0, bench.stderr
    data = json.loads(bench.stdout)
    assert data["tg"]["tokens_per_s"] > 0
    assert sum(1 for d in data["device"]["devices"] if d.startswith("RPC")) == 2


@needs_rpc
def test_kvdeck_worker_prints_its_devices_and_ends_cleanly_on_ctrl_c() -> None:
    port = free_port()
    proc = spawn_kvdeck("worker", "--port", str(port))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(f"worker listening on 127.0.0.1:{port} (llama.cpp RPC")
        assert lines[1].strip().startswith("CPU:") and " free of " in lines[1]
        assert probe(f"127.0.0.1:{port}").devices  # it serves
        proc.stdout.readline()  # the probe came and went (named if it was still there)
        proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port)) as client:  # a client that stays
            me = f"127.0.0.1:{client.getsockname()[1]}"
            line = proc.stdout.readline()
            assert re.fullmatch(rf"\d\d:\d\d:\d\d client {re.escape(me)} connected\n", line), line
        assert proc.stdout.readline().endswith(f" client {me} disconnected\n")
    finally:
        proc.send_signal(signal.SIGINT)  # also when an assertion failed: no worker is left behind
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err.strip() == "worker stopped"
    with pytest.raises(KvDeckError, match="nothing is listening"):
        probe(f"127.0.0.1:{port}")  # its server process is gone too


@contextmanager
def _serving(*rpc: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``kvdeck serve --demo --rpc ...`` on a free port: (the process, its /v1 URL); stopped."""
    proc = spawn_kvdeck("serve", "--demo", "--port", "0", "--rpc", ",".join(rpc))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving MODEL at http://127.0.0.1:PORT/v1 (...)"
        assert " at http" in line, proc.stderr.read() if proc.stderr else ""
        yield proc, line.split(" at ", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def _ask(url: str, prompt: str = "Name three colors.", max_tokens: int = 8) -> dict[str, object]:
    import httpx

    model = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }


@needs_rpc
def test_serve_answers_with_the_model_split_across_a_worker() -> None:
    import httpx

    with workers(1) as (w,), _serving(w.endpoint) as (_proc, url):
        r = httpx.post(f"{url}/chat/completions", json=_ask(url), timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert w.peers()  # the server's runtime holds the worker


@needs_rpc
def test_serve_goes_on_without_a_worker_killed_mid_stream() -> None:
    """The request in flight ends with the error naming the worker; the server reloads the
    model on the machines left and the next request is answered."""
    import httpx

    with workers(2) as ws, _serving(*(w.endpoint for w in ws)) as (proc, url):
        doomed = ws[1]
        story = "Write a long story about a dragon who learns to bake bread."
        body = {**_ask(url, story, max_tokens=400), "stream": True, "temperature": 0}
        lines = []
        with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not lines:
                    os.kill(doomed.pid or 0, signal.SIGKILL)  # the reply has started on both workers
                lines.append(line)
        assert any(f"worker {doomed.endpoint} went away while decoding" in ln for ln in lines), lines[-3:]
        assert proc.stderr is not None
        said: list[str] = []
        while not said or not said[-1].startswith("serving again"):  # waits for the reload
            line = proc.stderr.readline()
            assert line, "serve ended instead of reloading"
            if "went away" in line or "serving again" in line:
                said.append(line.strip())
        assert said == [
            f"worker {doomed.endpoint} went away while decoding; the model is reloaded without it",
            f"serving again on {ws[0].endpoint}",
        ]
        r2 = httpx.post(f"{url}/chat/completions", json=_ask(url), timeout=120)
        assert r2.status_code == 200 and r2.json()["choices"][0]["message"]["content"]
