"""``--rpc HOST:PORT[,HOST:PORT]`` on chat, plan, fit, bench and serve: use llama.cpp RPC
workers' devices as if they were local GPUs (engine.runtime.workers), and carry on without a
worker that goes away in the middle of a chat reply.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from engine.core.errors import RuntimeFailure
from engine.core.memory_types import Device
from engine.runtime.workers import parse_endpoints


def add_rpc_option(p: Any) -> None:
    p.add_argument(
        "--rpc",
        default="",
        metavar="HOST:PORT[,HOST:PORT]",
        help="also use these llama.cpp RPC workers' devices (start one with: kvdeck worker)",
    )


def endpoints(args: argparse.Namespace) -> tuple[str, ...]:
    return parse_endpoints(getattr(args, "rpc", "") or "")


def devices_for(rpc: tuple[str, ...]) -> list[Device]:
    """This machine's plan devices plus every worker's (each probed now)."""
    from engine.runtime.info import plan_devices

    return plan_devices(rpc=rpc)[0]


def reply_surviving_workers(
    host: Any,
    run: Callable[[str, int, Callable[[str], None]], Any],
    reload: Callable[[list[Device]], Any],
    prompt: str,
    max_tokens: int,
    on_text: Callable[[str], None] | None,
) -> tuple[Any, str]:
    """``run(prompt, max_tokens, on_text)`` a reply; when a worker goes away in the middle (the
    child dies with it: ggml-rpc aborts on a dead socket), say so in one line, start a child
    without that worker, ``reload`` the model on the devices left and finish the same reply from
    where it stopped, so neither the conversation nor the text so far is lost.

    Returns (the Done of the whole reply, the one-line note or "")."""
    partial: list[str] = []

    def keep(text: str) -> None:
        partial.append(text)
        if on_text is not None:
            on_text(text)

    try:
        return run(prompt, max_tokens, keep), ""
    except RuntimeFailure:
        outcome = host.outcome
        if outcome is None or not outcome.lost_workers:
            raise
    note = f"{outcome.sentence}; the reply goes on without it"
    print(note, file=sys.stderr, flush=True)
    host.rpc = tuple(e for e in host.rpc if e not in outcome.lost_workers)
    host.start()
    host.wait_ready()
    reload(devices_for(host.rpc))
    so_far = "".join(partial)
    left = max(1, max_tokens - len(host.tokenize(so_far, add_special=False)))
    done = run(prompt + so_far, left, keep)
    return dataclasses.replace(done, text=so_far + done.text), note
