"""Streaming HTTP clients for the server benchmarks (server_load.py, server_vs_llama.py).

Both benchmarks report what a real client sees, so they time it one way, here: a request is read
as server-sent events (chat ``delta.content`` or completion ``text`` chunks), its first token is
the first chunk with text, and a round is N client threads released together. Each thread makes
its ``httpx.Client`` before the round's clock starts: making one loads the CA bundle, tens of ms
that several threads would otherwise spend in turn inside the measured time to first token.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

TIMEOUT_S = 900


def stream(http: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as a streamed request (usage included) and read its events to the end.

    Returns ``ok``, the ``perf_counter`` times ``t0`` (sent), ``first`` (first text chunk, None
    when none came) and ``end``, the number of text ``chunks`` and when each came (``times``),
    and the last ``usage`` and
    ``timings`` objects seen (llama-server sends ``timings``, kvdeck and OpenAI ``usage``).
    ``counts``: per text chunk, the tokens generated up to it (``timings.predicted_n``, which
    llama-server and kvdeck send in every chunk with ``timings_per_token``), where every chunk
    said; else None.
    """
    t0 = time.perf_counter()
    first = None
    times: list[float] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    counts: list[int | None] = []
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "timings_per_token": True}
    with http.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code, "body": r.read().decode()[:300]}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage") or usage
            timings = data.get("timings") or timings
            choice = data["choices"][0] if data.get("choices") else {}
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                times.append(time.perf_counter())
                counts.append((data.get("timings") or {}).get("predicted_n"))
                if first is None:
                    first = times[0]
    end = time.perf_counter()
    return {
        "ok": True,
        "t0": t0,
        "first": first,
        "end": end,
        "chunks": len(times),
        "times": times,
        "counts": counts if counts and None not in counts else None,
        "usage": usage,
        "timings": timings,
    }


def fan_out(
    clients: int, per_client: int, request: Callable[[httpx.Client, int, int], dict[str, Any]]
) -> tuple[list[dict[str, Any]], float]:
    """``clients`` threads each call ``request(http, client, k)`` for k < ``per_client`` in turn.

    Returns every result (in the order they finished) and the round's wall time, from the moment
    all threads have their client to the last reply's end.
    """
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(timeout=TIMEOUT_S) as http:
            ready.wait()
            for k in range(per_client):
                r = request(http, c, k)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    ready.wait()  # every client is made: the round starts now
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0
