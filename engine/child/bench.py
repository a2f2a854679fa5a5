"""Prefill and decode speed of the loaded model, measured inside the runtime child.

The numbers have to be comparable with llama.cpp's ``llama-bench`` on the same file, so this
mirrors what it does (``tools/llama-bench/llama-bench.cpp``: ``test_prompt``/``test_gen``):

* pp: wall time to decode ``n_prompt`` random tokens as one sequence, in chunks of n_batch
  (ubatch as loaded), logits for the last token only, ending with a synchronise;
* tg: wall time for ``n_gen`` single-token decodes with an output each, at ``depth`` tokens
  of context (prefilled first, not timed);
* one warm-up, memory cleared before every repetition, t/s per repetition (llama-bench's
  ``avg_ts`` is their mean).

Unlike llama-bench, tg runs through KV Deck's real generation path: the same hot loop a chat
reply uses (``engine.child.decode.run_loop``), with the native sampler chain (on the device when
available), detokenisation and streamed Delta events; only the end-of-generation stop is off,
so a random model cannot end a repetition early. The difference to llama-bench is therefore
exactly what the app adds per token.
"""

from __future__ import annotations

import ctypes
import threading
import time

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.decode import run_loop
from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model
from engine.child.sampler import Sampling
from engine.child.session import LlamaSession
from engine.core.sampling import SamplingParams
from engine.protocol import BenchRequest, BenchResult

#: llama-bench's tg compares with plain greedy: no penalties, no truncation.
GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
#: Warm-up generation length: CUDA graphs are captured after two identical decodes.
_WARMUP_GEN = 4


def devices() -> list[str]:
    """ggml's devices as "NAME: description" (e.g. "CUDA0: NVIDIA H100 80GB HBM3")."""
    lib = LL._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        out.append(
            f"{lib.ggml_backend_dev_name(dev).decode()}: "
            f"{lib.ggml_backend_dev_description(dev).decode(errors='replace')}"
        )
    return out


class _Bench:
    """One benchmark request on the session's loaded model."""

    def __init__(self, session: LlamaSession, req: BenchRequest, cancel: threading.Event) -> None:
        self.s = session
        self.req = req
        self.cancel = cancel
        self.m: Model = session.require()
        self.rng = np.random.default_rng(1234)
        self.reused = 0
        self.evals = 0

    def tokens(self, n: int) -> list[int]:
        return self.rng.integers(0, self.m.n_vocab, size=n).tolist()

    def clear(self) -> None:
        self.m.clear()

    def prefill(self, tokens: list[int], pos0: int) -> None:
        """KV Deck's prefill path, then a synchronise (llama_decode returns before the device ends)."""
        self.m.prefill(tokens, pos0, self.cancel)
        LL.llama_synchronize(self.m.ctx)

    def pp(self) -> float:
        n, depth = self.req.n_prompt, self.req.depth
        self.clear()
        if depth:
            self.prefill(self.tokens(depth), 0)
        toks = self.tokens(n)
        t0 = time.perf_counter()
        self.prefill(toks, depth)
        return n / (time.perf_counter() - t0)

    def tg(self, sp: Sampling, n_gen: int, count: bool = True) -> float:
        """n_gen decodes through the chat's hot loop, after ``depth`` untimed tokens."""
        self.clear()
        prompt = self.tokens(max(self.req.depth, 1))
        self.prefill(prompt, 0)
        s, m = self.s, self.m
        if sp.chain is not None:
            LL.llama_sampler_reset(sp.chain)
        tok = s.samplers.first_token(m, sp, prompt, False, self.cancel)
        before = LL.llama_perf_context(m.ctx)
        t = time.perf_counter()
        done = run_loop(
            s.emit,
            self.req.id,
            m,
            sp,
            tok,
            len(prompt),
            0,
            n_gen + 1,
            t,
            t,
            self.cancel,
            stream=True,
            stop_at_eog=False,
        )
        if done.stop_reason != "length":
            raise RequestError(
                ErrorKind.CANCELLED if done.stop_reason == "cancelled" else ErrorKind.CONTEXT,
                f"the benchmark stopped early ({done.stop_reason})",
            )
        if count:
            after = LL.llama_perf_context(m.ctx)
            self.reused += after.n_reused - before.n_reused
            self.evals += after.n_eval - before.n_eval
        return n_gen / done.decode_s

    def run(self) -> BenchResult:
        req, m = self.req, self.m
        if min(req.n_prompt, req.n_gen, req.depth) < 0 or req.repetitions < 1:
            raise RequestError(
                ErrorKind.PARAMS, "token counts must not be negative and repetitions at least 1"
            )
        if req.n_prompt == 0 and req.n_gen == 0:
            raise RequestError(
                ErrorKind.PARAMS, "nothing to measure: both the prompt and the generation length are 0"
            )
        need = max(req.depth + req.n_prompt, max(req.depth, 1) + req.n_gen + 1)
        if need > m.n_ctx:
            raise RequestError(
                ErrorKind.PARAMS,
                f"the benchmark needs a context of {need} tokens; the model was loaded with {m.n_ctx}",
            )
        sampling = SamplingParams.from_dict(req.sampling) if req.sampling else GREEDY
        threads = (LL.llama_n_threads(m.ctx), LL.llama_n_threads_batch(m.ctx))
        if req.n_threads > 0:
            LL.llama_set_n_threads(m.ctx, req.n_threads, req.n_threads)
        sp = self.s.samplers.choose(m, sampling, req.sampler, no_empty=False)
        try:
            # like llama-bench, pp and tg are separate tests, each with its own warm-up: a pp
            # rep between tg reps would make every tg rep start on a rebuilt, uncaptured graph
            warmup_s = 0.0
            pp: list[float] = []
            tg: list[float] = []
            if req.n_prompt:
                t = time.perf_counter()
                self.clear()
                self.prefill(self.tokens(req.n_prompt), 0)
                warmup_s += time.perf_counter() - t
                pp = [self.pp() for _ in range(req.repetitions)]
            if req.n_gen:
                t = time.perf_counter()
                self.tg(sp, min(req.n_gen, _WARMUP_GEN), count=False)
                warmup_s += time.perf_counter() - t
                tg = [self.tg(sp, req.n_gen) for _ in range(req.repetitions)]
            return BenchResult(
                id=req.id,
                pp_tokens_per_s=pp,
                tg_tokens_per_s=tg,
                n_prompt=req.n_prompt,
                n_gen=req.n_gen,
                depth=req.depth,
                repetitions=req.repetitions,
                sampler=sp.name,
                backend_sampling=sp.backend,
                n_threads=int(LL.llama_n_threads(m.ctx)),
                n_ctx=m.n_ctx,
                devices=devices(),
                graph_reuse=self.reused / self.evals if self.evals else 0.0,
                warmup_s=warmup_s,
            )
        finally:
            self.clear()
            self.s.samplers.release(sp)
            LL.llama_set_n_threads(m.ctx, *threads)


def run_bench(session: LlamaSession, req: BenchRequest, cancel: threading.Event) -> BenchResult:
    """Entry point for the child's request loop."""
    return _Bench(session, req, cancel).run()
