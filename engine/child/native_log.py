"""llama.cpp's log and abort hooks, installed once per child process.

Both are process-global in llama.cpp, which is one more reason the runtime lives in its own
process: the hooks here belong to that process alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Callable

import llama_cpp  # noqa: F401  (installs llama-cpp-python's own log callback, replaced below)
import llama_cpp.llama_cpp as LL

from engine.child.rpc_lost import mark
from engine.plan.alloc_failure import describe_allocation_failure
from engine.protocol import ABORT_PREFIX

#: ggml's own level numbers in this tree: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


MAX_CAPTURE = 2000
_MEMORY_WORDS = (
    "size",
    "n_ctx",
    "n_seq",
    "n_batch",
    "n_ubatch",
    "flash",
    "Flash",
    "cells",
    "SWA",
    "offload",
    "layer",
    "swa",
    "causal",
    "type_k",
    "type_v",
    "kv_unified",
    "cache",
    "n_outputs",
    "n_rs",
    "Flash Attention",
    "load_mode",  # how the weights are read (engine.child.session.loaded_mode)
)


def _is_memory_line(message: str) -> bool:
    if message.startswith(("print_info", "llama_model_loader", "load: ", "llama_model_load")):
        return False
    return any(word in message for word in _MEMORY_WORDS)


class NativeLog:
    """llama.cpp's log callback, forwarded as whole lines with Python logging levels.

    Replaces llama-cpp-python's import-time callback, whose level map is stale for this tree
    (it hides real errors). DEBUG is dropped first thing: some of it arrives once per token.
    Tools that read a single load's log (tools/llama_dry_run.py, benchmarks/) keep the
    DEBUG lines that contain one of ``keep_debug`` (``("",)``: all of them), passed on at
    `logging.DEBUG`.
    """

    def __init__(self, sink: Callable[[int, str], None], keep_debug: tuple[str, ...] = ()) -> None:
        self._sink = sink
        self._keep_debug = keep_debug
        self._level = 2
        self._buffer = b""
        self.recent_errors: list[str] = []
        self._capture: list[str] | None = None
        self._cb = LL.llama_log_callback(self._on_log)  # keep a reference: C holds the pointer
        LL.llama_log_set(self._cb, ctypes.c_void_p())

    def _on_log(self, level: int, text: bytes, _ud: object) -> None:
        if level == 5:
            level = self._level
        else:
            self._level = level
        if (level == 1 and not self._keep_debug) or not text:
            return
        self._buffer += text
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = line.decode("utf-8", "replace").rstrip()
            if level == 1 and not any(k in message for k in self._keep_debug):
                continue
            if message:
                if (
                    self._capture is not None
                    and len(self._capture) < MAX_CAPTURE
                    and _is_memory_line(message)
                ):
                    self._capture.append(message)
                py_level = _LEVELS.get(level, logging.INFO)
                if py_level >= logging.WARNING:
                    self.recent_errors = (self.recent_errors + [message])[-8:]
                self._sink(py_level, message)

    def start_capture(self) -> None:
        """Collect the memory-related lines of a load (sizes, cells, context) for the plan."""
        self._capture = []

    def captured(self) -> list[str]:
        """The lines captured so far, without stopping (a load reads its own flash-attention choice)."""
        return list(self._capture or [])

    def stop_capture(self) -> list[str]:
        lines, self._capture = self._capture or [], None
        return lines

    def last_problem(self) -> str:
        """The most telling recent warning/error line, for one-line failure messages.

        llama.cpp ends every failed load with "failed to load model"; the reason is the line
        before ("llama_model_load: error loading model: check_tensor_dims: tensor 'x' not
        found"), so that one wins, without the function names in front."""
        for line in reversed(self.recent_errors):
            if "error loading model:" in line:
                return _tidy(line.split("error loading model:", 1)[1])
        for line in reversed(self.recent_errors):
            if "error" in line.lower() or "failed" in line.lower():
                return _tidy(line)
        return _tidy(self.recent_errors[-1]) if self.recent_errors else ""

    def failure_reason(self, default: str) -> str:
        """Why llama.cpp just failed to load or to create a context, in one sentence: the
        allocation that failed (``engine.plan.alloc_failure``), else the telling log line."""
        return describe_allocation_failure(self.recent_errors) or self.last_problem() or default


def _tidy(line: str) -> str:
    """Drop leading "function_name: " prefixes and runs of spaces from a llama.cpp log line."""
    return " ".join(re.sub(r"^(\s*[A-Za-z_][\w:<>~]*: )+", "", line).split())


def install_abort_hook() -> object:
    """Write ggml's abort message to stderr before ``abort()``, so the parent can quote it."""
    hook_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    def on_abort(msg: bytes | None) -> None:
        text = (msg or b"").replace(b"\n", b" ")
        try:
            text = mark(text)
        except Exception:  # noqa: BLE001 - the message must get out whatever happens
            pass
        os.write(2, ABORT_PREFIX.encode() + text + b"\n")

    hook = hook_type(on_abort)
    try:
        setter = LL._lib.ggml_set_abort_callback
        setter.argtypes = [hook_type]
        setter.restype = ctypes.c_void_p
        setter(hook)
    except AttributeError:
        pass
    return hook
