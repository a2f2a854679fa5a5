"""The routes beside chat and completions: /tokenize, /detokenize, /v1/embeddings, /v1/kvdeck/memory.

``/tokenize`` and ``/detokenize`` take and return what llama-server's do (``content``,
``add_special``, ``with_pieces``; ``tokens``), so tools written for it work here.
``/v1/embeddings`` is OpenAI's; only models whose GGUF declares a pooling can answer it (a 400
says so otherwise, engine.child.embed). ``/v1/kvdeck/memory`` is what the window's Memory dock
shows: the plan (predicted from the GGUF metadata) beside what llama.cpp logged it allocated,
per device and component, the KV fill of each sequence, and live free memory; when the server
drafts (``kvdeck serve --mtp`` / ``--draft ASSISTANT``), ``drafting`` adds the drafting context's
own plan and the acceptance per draft position of every drafted reply so far.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import struct
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import protocol as P
from engine.core.errors import KvDeckError
from engine.serve.calls import model_id, refusal_for
from engine.serve.openai_api import ApiError

#: The server's Api object (engine.serve.server), passed in: importing it here would be a cycle.
Api = Any

MAX_INPUTS = 256
MAX_TOKENS = 1 << 20


def _call(api: Api, build: Any) -> P.Message:
    host, _ = api._ready()
    try:
        return host.call("tokenize", build, timeout=120)
    except KvDeckError as exc:
        raise refusal_for(exc) from None


async def tokenize(api: Api, request: Request) -> Response:
    body = await api._body(request)
    content = body.get("content")
    if not isinstance(content, str):
        raise ApiError(400, "content must be a string", param="content")
    special = body.get("add_special", False)
    if not isinstance(special, bool):
        raise ApiError(400, "add_special must be true or false", param="add_special")
    msg = await run_in_threadpool(
        _call, api, lambda i: P.TokenizeRequest(id=i, text=content, add_special=special)
    )
    tokens = msg.tokens  # type: ignore[attr-defined]
    if body.get("with_pieces"):
        pieces = []
        for t in tokens:
            text = await run_in_threadpool(_call, api, lambda i, t=t: P.DetokenizeRequest(id=i, tokens=[t]))
            pieces.append({"id": t, "piece": text.text})  # type: ignore[attr-defined]
        return JSONResponse({"tokens": pieces})
    return JSONResponse({"tokens": tokens})


async def detokenize(api: Api, request: Request) -> Response:
    body = await api._body(request)
    tokens = body.get("tokens")
    if (
        not isinstance(tokens, list)
        or len(tokens) > MAX_TOKENS
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)
    ):
        raise ApiError(400, "tokens must be a list of token ids", param="tokens")
    msg = await run_in_threadpool(_call, api, lambda i: P.DetokenizeRequest(id=i, tokens=tokens))
    return JSONResponse({"content": msg.text})  # type: ignore[attr-defined]


async def embeddings(api: Api, request: Request) -> Response:
    body = await api._body(request)
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "model is required (GET /v1/models lists it)", param="model")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if (
        not isinstance(inputs, list)
        or not inputs
        or len(inputs) > MAX_INPUTS
        or not all(isinstance(x, str) and x for x in inputs)
    ):
        raise ApiError(
            400,
            f"input must be a non-empty string or a list of at most {MAX_INPUTS} non-empty strings",
            param="input",
        )
    fmt = body.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be float or base64", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None:
        raise ApiError(
            400, "dimensions is not supported: the model's embedding size is fixed", param="dimensions"
        )
    api._enter()
    try:
        msg = await run_in_threadpool(_call, api, lambda i: P.EmbedRequest(id=i, texts=inputs))
    finally:
        api._leave()
    _, loaded = api._ready()
    data = []
    for k, vec in enumerate(msg.vectors):  # type: ignore[attr-defined]
        value: Any = vec if fmt == "float" else base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": k, "embedding": value})
    n = msg.n_tokens  # type: ignore[attr-defined]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model_id(loaded),
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }
    )


def _memory(api: Api) -> dict[str, Any]:
    host, loaded = api._ready()
    settings = api.model.settings() or P.LoadParams(loaded.path).settings
    out: dict[str, Any] = {
        "model": loaded.path,
        "n_ctx": loaded.n_ctx,
        "n_ctx_seq": loaded.n_ctx_seq,
        "load_mode": loaded.load_mode,  # as llama.cpp read the weights: "mmap" or "none"
        "time": time.time(),
        "notes": [],
        "plan": None,
        "drafting": _drafting(api),
    }
    try:
        from engine.gguf.inspect import inspect_gguf
        from engine.plan.analytic import analytic_plan
        from engine.runtime.info import plan_devices

        info, devices = inspect_gguf(loaded.path), plan_devices()[0]
        target = analytic_plan(info, settings, devices)
        out["plan"] = target.to_json()
        if out["drafting"] is not None:
            out["drafting"]["plan"] = _drafter_plan(api, info, target, devices).to_json()
    except Exception as exc:  # noqa: BLE001 - a plan that cannot be made is reported, not fatal
        out["notes"].append(f"no plan: {type(exc).__name__}: {exc}")
    if loaded.memory_log:
        from engine.plan.measured import MemoryLogParser

        parser = MemoryLogParser()
        for line in loaded.memory_log:
            parser.feed(line)
        out["measured"] = parser.result(settings, "measured").to_json()
    else:
        out["measured"] = None
        out["notes"].append("llama.cpp logged no memory lines for this load")
    slots = api.model.slots_state()
    out["sequences"] = (
        [
            {
                "seq": i,
                "n_past": n,
                "n_ctx_seq": slots.n_ctx_seq,
                "request": r,
                "fill": round(n / slots.n_ctx_seq, 4) if slots.n_ctx_seq else 0.0,
                "device_sampling": i < len(slots.device) and slots.device[i],
            }
            for i, (n, r) in enumerate(zip(slots.n_past, slots.requests))
        ]
        if slots is not None
        else []
    )
    out["waiting"] = slots.n_waiting if slots is not None else 0
    # Where the batch loop's time went (engine.child.batch_sample.LoopTimes): the share outside
    # llama_decode is what per-step overhead costs against llama-batched-bench.
    out["batch_loop"] = (
        {
            "steps": slots.steps,
            "decode_s": slots.decode_s,
            "sample_s": slots.sample_s,
            "busy_s": slots.busy_s,
            "gen_steps": slots.gen_steps,
            "gen_decode_s": slots.gen_decode_s,
            "gen_sample_s": slots.gen_sample_s,
            "reorder_s": slots.reorder_s,
            "cut_rows": slots.cut_rows,
            "followed": slots.followed,
            "relaunch_s": slots.relaunch_s,
            "native_s": slots.native_s,
            "cut_attached": slots.cut_attached,
        }
        if slots is not None
        else None
    )
    from engine.runtime.telemetry import Telemetry

    if api.telemetry is None:
        api.telemetry = Telemetry()
    snap = api.telemetry.snapshot([os.getpid()] + ([host.pid] if host.pid else []))
    out["live"] = {
        "host": dataclasses.asdict(snap.host),
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "total_bytes": g.total_bytes,
                "free_bytes": g.free_bytes,
                "used_bytes": g.used_bytes,
                "this_app_bytes": g.this_app_bytes,
            }
            for g in snap.gpus
        ],
        "gpu_unavailable_reason": snap.gpu_unavailable_reason,
    }
    return out


def _drafting(api: Api) -> dict[str, Any] | None:
    """When the server drafts: what drafts, and acceptance per draft position over every drafted
    reply so far (engine.serve.shapes.DraftTally); ``plan`` is added beside the target's."""
    if not api.model.draft:
        return None
    counts = api.drafted.summary()
    counts.pop("draft")
    return {"draft": api.model.draft, "draft_max": api.model.draft_max, "plan": None, **counts}


def _drafter_plan(api: Api, info: Any, target: Any, devices: Any) -> Any:
    """The drafting context's own memory per device and component (engine.plan.drafting at the
    target's context): the model's MTP heads, or the loaded Gemma 4 assistant's."""
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.drafting import drafting_plan

    assistant = inspect_gguf(api.model.draft_path) if api.model.draft == "model" else None
    return drafting_plan(info, target, devices, assistant, target.settings.n_gpu_layers)


async def memory(api: Api, request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_memory, api))
