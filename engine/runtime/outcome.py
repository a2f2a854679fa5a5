"""How a runtime child ended, as a typed outcome with a sentence a user can read.

Split from `engine.runtime.process` (which turns the child's death into a `ProcessOutcome`) so the
wording of every way a process can end lives in one small place: killed by the OOM killer, an
abort with llama.cpp's assert message, a segfault, a plain exit status.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

#: What the child was doing, by the kind of the request in flight, for the sentence.
_PHASES = {
    "load": "loading the model",
    "generate": "generating a reply",
    "idle": "idle",
    "start": "starting",
    "precision": "checking the quality of a KV cache type",
    "bench": "running a benchmark",
    "load_draft": "loading the draft model",
}


@dataclass(frozen=True)
class ProcessOutcome:
    """How the child ended, and a sentence for the user."""

    exit_code: int | None
    signal_name: str | None
    phase: str
    abort_message: str
    last_error: str
    expected: bool
    sentence: str
    #: llama.cpp RPC workers that went away and ended the child (engine.runtime.workers).
    lost_workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exited:
    """Delivered to the event callback once, after the child has gone."""

    outcome: ProcessOutcome


def module_command(module: str) -> list[str]:
    """``python -m module`` without the working directory in front of ``sys.path``: ``-m`` puts
    it there, ahead of the PYTHONPATH that names the parent's own engine, so an ``engine``
    folder wherever the user started KV Deck would run instead (``-P``, Python 3.11+)."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", module]


def child_command() -> list[str]:
    """How to start the child: a module in development, a flag of the bundled executable."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--runtime-child"]
    return module_command("engine.child")


def describe_exit(
    code: int | None, phase: str, abort_message: str, last_error: str, expected: bool
) -> ProcessOutcome:
    sig_name = None
    if code is not None and code < 0:
        try:
            sig_name = signal.Signals(-code).name
        except ValueError:
            sig_name = f"signal {-code}"
    doing = _PHASES.get(phase, phase)
    if expected and code in (0, None, -signal.SIGTERM, -signal.SIGKILL):
        sentence = "The runtime stopped."
    elif sig_name == "SIGKILL":
        sentence = (
            f"The runtime was killed (SIGKILL) while {doing}; the system may have run out "
            f"of memory, or another program ended it."
        )
    elif sig_name == "SIGABRT" and abort_message:
        sentence = f"The runtime crashed while {doing}: {abort_message}"
    elif sig_name:
        reason = {
            "SIGSEGV": "segmentation fault",
            "SIGABRT": "aborted",
            "SIGBUS": "bus error",
            "SIGILL": "illegal instruction",
            "SIGTERM": "terminated",
        }.get(sig_name, sig_name)
        detail = f": {abort_message or last_error}" if (abort_message or last_error) else "."
        sentence = f"The runtime crashed ({reason}) while {doing}{detail}"
    else:
        detail = f": {abort_message or last_error}" if (abort_message or last_error) else "."
        sentence = f"The runtime exited with status {code} while {doing}{detail}"
    return ProcessOutcome(
        code, sig_name, phase, abort_message, last_error, expected, " ".join(sentence.split())
    )
