"""``kvdeck serve``: the OpenAI-compatible API server (engine.serve.server) on the command line.

The memory is planned for all parallel sequences before anything loads, exactly like ``kvdeck
plan``/``fit`` would for the same options: N sequences of n_ctx/N tokens each (one shared pool
of n_ctx with ``--kv-unified``). Without ``--ctx`` each sequence gets min(training context,
4096) tokens, shrunk to what fits the memory; an explicit ``--ctx`` that does not fit is refused
instead, in one line, like every other CLI error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from engine.cli.drafting import add_drafter_options, drafter
from engine.cli.memory import add_plan_options, settings_from_args
from engine.core.errors import KvDeckError, RuntimeFailure
from engine.core.memory_types import MiB

DEFAULT_PARALLEL = 4


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model through an OpenAI-compatible HTTP API")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("path", nargs="?")
    src.add_argument("--demo", action="store_true", help="use the bundled SmolLM2-135M demo model")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other address requires --api-key)",
    )
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("KVDECK_API_KEY", ""),
        help="require 'Authorization: Bearer KEY' (default: $KVDECK_API_KEY)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"parallel sequences, one per client (default {DEFAULT_PARALLEL})",
    )
    p.add_argument(
        "--ctx",
        type=int,
        default=None,
        help="total context of all sequences (default: parallel x min(training, 4096), fitted to the memory)",
    )
    p.add_argument(
        "--queue", type=int, default=16, help="requests that may wait for a sequence (more are answered 429)"
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (repeatable; default: no CORS)",
    )
    p.add_argument(
        "--alias",
        default="",
        help="a second model name shown in /v1/models (requests "
        "naming any model are answered by the loaded one)",
    )
    p.add_argument(
        "--overflow",
        choices=("rolling", "middle", "stop"),
        default=None,
        help="what to do with a chat request longer than a sequence: drop the oldest "
        "turns (rolling), keep the first exchange and the newest (middle), or "
        "refuse (stop); default: OpenAI's 400 context_length_exceeded",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--budget-mib", type=int, default=None, help="memory budget per GPU (or RAM) in MiB")
    add_plan_options(p, skip={"path", "--ctx", "--parallel", "--json"})
    add_drafter_options(p, "draft per sequence with this Gemma 4 assistant")
    p.add_argument(
        "--draft-max", type=int, default=8, help="most tokens drafted per sequence and step (default 8)"
    )


def serve_drafter(args: argparse.Namespace, info: Any) -> tuple[str, Any]:
    """("mtp" | "assistant" | "", the assistant's GGUFInfo): what drafts per sequence, checked in
    one line before loading. A separate draft model keeps one sequence of its own, so the batch
    loop cannot use it (engine.child.batch_spec): refused here rather than served without drafting."""
    if args.draft_max < 1:
        raise KvDeckError(f"--draft-max must be at least 1, not {args.draft_max}")
    spec = drafter(args, info, settings_from_args(args, info))
    if spec is None:
        return "", None
    if spec.kind == "model":
        raise KvDeckError(
            f"kvdeck serve drafts per sequence only with the model's own MTP heads (--mtp) or a Gemma 4 "
            f"assistant; {os.path.basename(args.draft)} is a separate draft model (use it with kvdeck chat --draft)"
        )
    return spec.kind, (spec.info if spec.kind == "assistant" else None)


def plan_settings(
    args: argparse.Namespace,
    info: Any,
    drafting: tuple[str, Any] = ("", None),
    devices: Any = None,
    chosen_for: Any = None,
) -> Any:
    """PlanSettings for N sequences that pass preflight, fitted when --ctx was not given; with a
    drafter (``serve_drafter``), target and drafting context fitted together. ``devices``: the
    devices already probed (default: probe them now); ``chosen_for``: the devices of the first
    load, when some went away since (engine.plan.fit.split_left)."""
    from engine.cli.loading import LoadCheck, load_check
    from engine.cli.rpc import devices_for, endpoints
    from engine.plan.drafting import mtp_settings
    from engine.plan.fit import fit, split_left

    if args.parallel < 1 or args.parallel > 256:
        raise KvDeckError(f"--parallel must be between 1 and 256, not {args.parallel}")
    given = args.ctx is not None
    if not given:
        args.ctx = args.parallel * min(info.n_ctx_train or 4096, 4096)
    devices = devices if devices is not None else devices_for(endpoints(args))
    settings = settings_from_args(args, info)
    if chosen_for is not None:
        settings = split_left(settings, chosen_for, devices)
    if drafting[0] == "mtp":
        settings = mtp_settings(info.hybrid, settings, args.draft_max)
    check = load_check(args, info, settings, drafting[1])  # as chat and bench check
    budget = args.budget_mib * MiB if args.budget_mib is not None else None
    if budget is None:
        try:
            return check.placed_on(devices)
        except KvDeckError:
            if given:
                raise
    result = fit(
        info,
        settings,
        devices,
        plan_fn=check.plan_fn,
        budget_bytes=budget,
        max_context=settings.n_ctx,
        min_context=min(settings.n_ctx, 256 * args.parallel),
    )
    if not result.fits:
        raise KvDeckError(f"{args.parallel} parallel sequences {result.reason}")
    return LoadCheck(info, result.settings, check.plan_fn).placed_on(devices)  # fit pinned the split itself


def cmd_serve(args: argparse.Namespace) -> int:
    from engine import protocol as P
    from engine.cli.args import model_path
    from engine.cli.rpc import devices_for, endpoints
    from engine.gguf.inspect import inspect_gguf
    from engine.protocol import LoadParams
    from engine.runtime.host import RuntimeHost
    from engine.serve.server import ApiServer, ServedModel, ServerConfig, check_config, model_id

    config = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        cors_origins=tuple(args.cors_origin),
        max_queue=max(0, args.queue),
        overflow=args.overflow or "",
    )
    check_config(config)  # before minutes of loading, not after
    path = model_path(args)
    info = inspect_gguf(path)
    ctx_given = args.ctx
    drafting = serve_drafter(args, info)
    first = devices_for(endpoints(args))  # a user's split is for these, should a worker go away
    settings = plan_settings(args, info, drafting, first)
    server: ApiServer | None = None
    latest: list[P.Slots] = []
    # what the server reads: replaced when the model is reloaded without a worker
    now: dict[str, Any] = {"loaded": None, "settings": settings}

    def on_event(msg: object) -> None:  # the KV fill per sequence, for /v1/kvdeck/memory
        if isinstance(msg, P.Slots):
            latest[:] = [msg]

    with RuntimeHost(on_event=on_event, rpc=endpoints(args)) as host:
        try:
            loaded = now["loaded"] = host.load(LoadParams(path, settings, n_threads=args.threads))
            if drafting[0] == "mtp" and loaded.mtp != "ready":
                raise KvDeckError(loaded.mtp)  # one line at start-up, never served without drafting
            if drafting[0] == "assistant":
                host.load_draft(args.draft)
            served = ServedModel(
                host=lambda: host,
                loaded=lambda: now["loaded"],
                slots=lambda: now["settings"].n_seq_max,
                alias=args.alias,
                settings=lambda: now["settings"],
                slots_state=lambda: latest[0] if latest else None,
                draft={"mtp": "mtp", "assistant": "model"}.get(drafting[0], ""),
                draft_max=args.draft_max,
                draft_path=args.draft or "",
            )
            server = ApiServer(served, config)
            url = server.start()
            print(
                f"serving {model_id(loaded)} at {url}/v1 ({settings.n_seq_max} parallel sequences of "
                f"{loaded.n_ctx_seq} tokens{_drafting_words(drafting[0], args.draft_max)}; Ctrl-C stops)",
                flush=True,
            )
            try:
                while True:
                    while server.running and host.running:
                        time.sleep(0.25)
                    outcome = host.outcome
                    if not (server.running and outcome is not None and outcome.lost_workers):
                        break
                    args.ctx = ctx_given
                    now["loaded"] = None  # /health says 503 until the model is back
                    now["settings"], now["loaded"] = reload_without_workers(
                        host, args, info, path, drafting, first
                    )
            except KeyboardInterrupt:
                return 0
            if not host.running and host.outcome is not None and not host.outcome.expected:
                raise RuntimeFailure(host.outcome.sentence)
            return 0
        finally:
            if server is not None:
                server.stop()


def reload_without_workers(
    host: Any, args: argparse.Namespace, info: Any, path: str, drafting: tuple[str, Any], first: Any = None
) -> tuple[Any, Any]:
    """A worker went away and took the runtime child with it (ggml-rpc aborts on a dead
    socket): the requests in flight were answered 503 with the sentence naming it; say it on
    stderr, plan again for the machines left (the same options, so a context that no longer
    fits is refused in one line) and load there with the same drafter, as chat does, so new
    requests work."""
    from engine.protocol import LoadParams

    outcome = host.outcome
    print(f"{outcome.sentence}; the model is reloaded without it", file=sys.stderr, flush=True)
    host.rpc = tuple(e for e in host.rpc if e not in outcome.lost_workers)
    args.rpc = ",".join(host.rpc)
    settings = plan_settings(args, info, drafting, chosen_for=first)
    host.start()
    host.wait_ready()
    loaded = host.load(LoadParams(path, settings, n_threads=args.threads))
    if drafting[0] == "assistant":
        host.load_draft(args.draft)
    print(f"serving again on {', '.join(host.rpc) or 'this machine alone'}", file=sys.stderr, flush=True)
    return settings, loaded


def _drafting_words(kind: str, draft_max: int) -> str:
    if not kind:
        return ""
    who = "the model's own MTP heads" if kind == "mtp" else "the Gemma 4 assistant"
    return f", each drafting up to {draft_max} tokens with {who}"
