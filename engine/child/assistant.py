"""Loading a Gemma 4 assistant (``gemma4-assistant``) as the draft of a loaded Gemma 4 target.

Child side. The pair is checked from the two GGUF headers first (engine.plan.assistant_rules):
a wrong pair would abort the process inside llama.cpp, which no Python handler can catch. Its
context is then built by construction from the target's resolved context (engine.child.selfdraft
``drafting_params``), never from the request: the request only names the file and GPU layers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.draft import draft_loaded
from engine.child.errors import ErrorKind, RequestError
from engine.child.selfdraft_context import create
from engine.core.errors import ModelFileError
from engine.gguf.inspect import inspect_gguf
from engine.plan.assistant_rules import ASSISTANT_ARCH, assistant_checks, embedding_length_out, refusal
from engine.protocol import DraftLoaded, LoadDraftRequest


def is_assistant(path: str) -> bool:
    """Whether a file is a Gemma 4 assistant (detected by architecture, not by name)."""
    try:
        return inspect_gguf(path).architecture == ASSISTANT_ARCH
    except ModelFileError:
        return False


def load_assistant(
    session: Any, req: LoadDraftRequest, cancel: threading.Event, unload_draft: Callable[[Any], None]
) -> DraftLoaded:
    """Check the pair, load the assistant's weights and give it a context sharing the target's KV
    (``unload_draft`` frees the previous draft, only once the new pair has passed the rules)."""
    m = session.require()
    target, assistant = inspect_gguf(m.path), inspect_gguf(req.path)
    checks = assistant_checks(target, assistant, embedding_length_out(req.path))
    why = refusal(os.path.basename(m.path), os.path.basename(req.path), checks)
    if why:
        raise RequestError(ErrorKind.PARAMS, why)
    unload_draft(session)
    t0 = time.perf_counter()
    offload = bool(LL.llama_supports_gpu_offload())
    tp = session.load_params.settings
    session.log.start_capture()
    try:
        model, sd = _load(session, req.id, req.path, req.n_gpu_layers, cancel)
    finally:
        lines = session.log.stop_capture()
    if not sd.shared:  # llama.cpp did not bind it to the target's memory: never draft from it
        sd.free()
        LL.llama_model_free(model)
        raise RequestError(
            ErrorKind.PARAMS,
            f"{os.path.basename(req.path)} did not attach to the target's KV cache; drafting is off",
        )
    sd.memory_log = lines
    session.draft = sd
    return draft_loaded(
        req,
        model,
        int(LL.llama_n_ctx(sd.ctx)),
        sd.n_vocab,
        tp.type_k,
        tp.type_v,
        offload,
        t0,
        lines,
        [vars(c) for c in checks],
        kind="assistant",
        shares_target_kv=True,
    )


def _load(
    session: Any, req_id: int, path: str, n_gpu_layers: int, cancel: threading.Event, dry_run: bool = False
) -> tuple[Any, Any]:
    """The assistant's weights (every block is a nextn block) and its context on the target's."""
    m, tp = session.require(), session.load_params.settings
    offload = bool(LL.llama_supports_gpu_offload())
    mp, keep = session.model_params(
        req_id,
        path,
        n_gpu_layers,
        offload,
        cancel,
        main_gpu=tp.main_gpu,
        load_mtp=True,
        dry_run=dry_run,
        load_mode=tp.load_mode,  # the target's: the plan sizes both files' host weights alike
    )
    try:
        model = session.load_model_file(path, mp, cancel, "the assistant")
    finally:
        del keep
    try:
        sd = create("assistant", m, tp, session.flash_resolved, session.log, model=model, path=path)
    except BaseException:
        LL.llama_model_free(model)
        raise
    return model, sd


def dry_run_assistant(session: Any, cancel: threading.Event, path: str) -> None:
    """Size an assistant's context next to a dry-run target (no allocation; the log lines go to
    the target load's capture), after the same pairing rules as a real load, then free it."""
    m = session.require()
    checks = assistant_checks(inspect_gguf(m.path), inspect_gguf(path), embedding_length_out(path))
    why = refusal(os.path.basename(m.path), os.path.basename(path), checks)
    if why:
        raise RequestError(ErrorKind.PARAMS, why)
    model, sd = _load(session, 0, path, session.load_params.settings.n_gpu_layers, cancel, dry_run=True)
    sd.free()
    LL.llama_model_free(model)
