"""Speculative decoding in the runtime child: a cheap proposer guesses, the target checks.

A draft model (or a lookup in the token history, ``engine.child.ngram``) proposes up to k tokens; the
target decodes ``[last] + drafts`` in ONE batch with every row as output, keeps the longest
prefix it agrees with plus one token of its own, and both KV caches are cut back with
``llama_memory_seq_rm``. Several tokens per target decode is the whole gain: a decode step of
a small batch costs little more than one token, the weights are read once either way.

Correctness comes first. Greedy requests compare the drafts with numpy's argmax per verify row,
exactly what plain greedy decoding picks. Whether the *logits* are the same as plain decoding's
depends on llama.cpp's kernels. On the CPU a 1-row batch multiplies with ggml's vec_dot and a larger
one with llamafile's sgemm wherever it has a kernel for the weight type (F32, F16, BF16, Q8_0, Q4_0,
Q5_0, IQ4_NL on x86; ggml-cpu.c: ``llamafile_sgemm`` refuses n < 2); the two sum in different
orders for float weights, so a near-tie can flip (SmolLM2 drafted by its Q4_1, 160 tokens on 8
prompts, AVX2 CPU: F16 target 1 differed from token 48, F32 1 from token 150; the Q8_0 and Q4_1
targets 8 of 8 identical: their block sums come out the same either way). On
CUDA, logits depend on the batch size too: verify batches are kept at ≤ 8 rows (the matrix-vector
kernels), but with flash attention on, a 1-row and a multi-row batch still take different
attention kernels and near-ties can flip (measured on an H100: identical with flash attention
off, a few differing tokens per hundred with it on). Sampled requests use true speculative
sampling (``engine.child.spec_sampling``), so the output follows the target's distribution.

Self-drafting (``engine.child.selfdraft``: the model's own MTP heads, mode "mtp", or a Gemma 4
assistant loaded as the draft model) uses the same verify/accept loop; its drafter is fed the
target's hidden states after every target decode, and its cache is cut back with the target's.
The API server, and the window on a context of several sequences, draft per sequence in the batch
loop instead, with any of these proposers (engine.child.batch_spec), so a reply never runs on
sequence 0 that another reply holds; this module serves one-sequence contexts.

Why the draft lives here, in the child, beside the target: llama.cpp's speculative helpers are
C++ (``common/``) and unreachable from Python, and the draft's context must be the target's
(llama.cpp b9550 crashed when a draft got its larger training context), so one owner builds both.
Recurrent and hybrid targets are refused: their state cannot be rolled back past a rejected
draft token without checkpoints, and a wrong rollback would silently corrupt the reply.

This module checks a request and chooses its proposer; the rounds themselves (propose, verify,
accept, emit) are ``engine.child.spec_loop``.
"""

from __future__ import annotations

import threading
import time

import llama_cpp.llama_cpp as LL

from engine.child.assistant import is_assistant, load_assistant
from engine.child.draft import draft_for, refuse_rollback_less, unload_draft
from engine.child.draft import load_draft as _load_draft_model
from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model
from engine.child.selfdraft import SelfDraft
from engine.child.session import LlamaSession
from engine.child.spec_loop import SpecRun
from engine.core.sampling import SamplingParams
from engine.protocol import Done, DraftLoaded, GenerateRequest, LoadDraftRequest

__all__ = ["MODES", "generate_speculative", "load_draft", "unload_draft"]

MODES = ("model", "lookup", "mtp")


def generate_speculative(session: LlamaSession, req: GenerateRequest, cancel: threading.Event) -> Done:
    """Entry point from the child's main loop when the request asks for drafting."""
    m = session.require()
    if req.draft not in MODES:
        raise RequestError(ErrorKind.PARAMS, f"draft must be one of {', '.join(MODES)}, not {req.draft!r}")
    refuse_rollback_less(m.model, "target", m.ctx, req.draft_max)
    sd = _self_drafter(session, m, req.draft)
    draft = draft_for(session, m) if req.draft == "model" and sd is None else None
    s = SamplingParams.from_dict(req.sampling)
    tokens = m.prompt_tokens(req.prompt)
    room = m.n_ctx_seq - len(tokens)  # sequence 0's share of a context of several
    t0 = time.perf_counter()
    session.samplers.free_retired(m)
    session.samplers.detach(m)  # a device chain would turn the verify rows into sampled logits
    run = SpecRun(session, m, draft, req, s, cancel, sd)
    try:
        return run.run(tokens, max(1, min(req.max_tokens, room)), t0)
    except RequestError:
        m.clear()
        if draft is not None:
            draft.cached.clear()
            LL.llama_memory_clear(draft.mem, True)
        if sd is not None:
            sd.truncate(0)
        raise


def _self_drafter(session: LlamaSession, m: Model, mode: str) -> SelfDraft | None:
    """The MTP heads for mode "mtp"; the loaded draft when it is a Gemma 4 assistant; else None."""
    if mode == "mtp":
        sd = session.mtp
        if sd is None:
            raise RequestError(
                ErrorKind.STATE,
                "this model was not loaded with its MTP heads (settings.mtp, "
                "kvdeck --mtp), so it cannot draft for itself",
            )
        return sd
    d = session.draft
    if mode == "model" and isinstance(d, SelfDraft):
        if d.target is not m:
            raise RequestError(ErrorKind.STATE, "the assistant was loaded for another target; load it again")
        return d
    return None


def load_draft(session: LlamaSession, req: LoadDraftRequest, cancel: threading.Event) -> DraftLoaded:
    """A draft model, or a Gemma 4 assistant (detected by architecture) that shares the target's KV."""
    if session.model is not None and is_assistant(req.path):
        refuse_rollback_less(session.model.model, "target", session.model.ctx)
        return load_assistant(session, req, cancel, unload_draft)
    return _load_draft_model(session, req, cancel)
