"""llama.cpp itself: one model and one context, driven through the low-level ctypes API.

Runs only inside the runtime child (``engine.child``): importing this module loads the native
library, and anything in there may abort the process. The parent never imports it.
"""
from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import gguf
import llama_cpp  # noqa: F401  (installs llama-cpp-python's own log callback, replaced below)
import llama_cpp.llama_cpp as LL
import numpy as np
import psutil

from engine.protocol import (
    Delta, Done, GenerateRequest, Loaded, LoadParams, Progress, Started, Stats,
)
from engine.native_log import NativeLog
from engine.sampling import SamplingParams

Emit = Callable[[object], None]

_FLASH = {"auto": LL.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": LL.LLAMA_FLASH_ATTN_TYPE_ENABLED,
          "off": LL.LLAMA_FLASH_ATTN_TYPE_DISABLED}
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
_DELTA_INTERVAL_S = 0.02


class RequestError(Exception):
    """A request failed in a way the child survives; ``kind`` tells the parent whose fault."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind


def ggml_type_id(name: str) -> int:
    if name not in KV_TYPES:
        raise RequestError("params", f"unknown KV cache type {name!r}; choose one of {', '.join(KV_TYPES)}")
    return int(gguf.GGMLQuantizationType[name.upper()])


@dataclass
class _Model:
    model: object
    ctx: object
    vocab: object
    mem: object
    batch: LL.llama_batch
    n_ctx: int
    n_batch: int
    n_vocab: int
    eog: np.ndarray
    eog_ids: list[int]
    bos: int
    path: str


class LlamaSession:
    """Owns at most one loaded model; every method runs on the child's main thread."""

    def __init__(self, emit: Emit, log: NativeLog) -> None:
        self._emit = emit
        self._log = log
        self._m: _Model | None = None
        self._cached: list[int] = []  # tokens whose KV is in sequence 0, for prefix reuse
        LL.llama_backend_init()

    # ------------------------------------------------------------------ load / unload
    def load(self, req_id: int, p: LoadParams, cancel: threading.Event) -> Loaded:
        self.unload()
        if not os.path.isfile(p.path):
            raise RequestError("model", f"model file not found: {p.path}")
        t0 = time.perf_counter()
        mp = LL.llama_model_default_params()
        offload = bool(LL.llama_supports_gpu_offload())
        mp.n_gpu_layers = (999 if p.n_gpu_layers < 0 else p.n_gpu_layers) if offload else 0
        last = [-1.0]

        def on_progress(fraction: float, _ud: object) -> bool:
            try:
                if fraction - last[0] >= 0.01 or fraction >= 1.0:
                    last[0] = fraction
                    self._emit(Progress(id=req_id, fraction=float(fraction)))
                return not cancel.is_set()
            except Exception:
                return False

        progress_cb = LL.llama_progress_callback(on_progress)
        mp.progress_callback = progress_cb
        model = LL.llama_model_load_from_file(p.path.encode(), mp)
        if not model:
            if cancel.is_set():
                raise RequestError("cancelled", "loading was cancelled")
            why = self._log.last_problem() or "llama.cpp refused the file"
            raise RequestError("model", f"could not load {os.path.basename(p.path)}: {why}")
        try:
            return self._create_context(req_id, p, model, offload, mp.n_gpu_layers, t0)
        except BaseException:
            LL.llama_model_free(model)
            raise

    def _create_context(self, req_id: int, p: LoadParams, model: object, offload: bool,
                        n_gpu_layers: int, t0: float) -> Loaded:
        n_ctx_train = int(LL.llama_model_n_ctx_train(model))
        cp = LL.llama_context_default_params()
        cp.n_ctx = p.n_ctx if p.n_ctx > 0 else max(256, min(n_ctx_train or 4096, 4096))
        cp.n_batch = max(32, p.n_batch)
        cp.n_ubatch = max(32, min(p.n_ubatch, cp.n_batch))
        cp.n_seq_max = max(1, p.n_seq_max)
        threads = p.n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 4
        cp.n_threads = cp.n_threads_batch = threads
        if p.flash_attn not in _FLASH:
            raise RequestError("params", f"flash attention must be auto, on or off, not {p.flash_attn!r}")
        cp.flash_attn_type = _FLASH[p.flash_attn]
        cp.type_k = ggml_type_id(p.type_k)
        cp.type_v = ggml_type_id(p.type_v)
        cp.swa_full = p.swa_full
        cp.kv_unified = p.kv_unified
        ctx = LL.llama_init_from_model(model, cp)
        if not ctx:
            why = self._log.last_problem() or "unknown reason"
            raise RequestError("params", f"could not create a context of {cp.n_ctx} tokens: {why}")
        vocab = LL.llama_model_get_vocab(model)
        n_vocab = int(LL.llama_vocab_n_tokens(vocab))
        eog = np.fromiter((bool(LL.llama_vocab_is_eog(vocab, i)) for i in range(n_vocab)),
                          dtype=bool, count=n_vocab)
        self._m = _Model(
            model=model, ctx=ctx, vocab=vocab, mem=LL.llama_get_memory(ctx),
            batch=LL.llama_batch_init(cp.n_batch, 0, 1), n_ctx=int(LL.llama_n_ctx(ctx)),
            n_batch=int(cp.n_batch), n_vocab=n_vocab, eog=eog,
            eog_ids=[int(i) for i in np.flatnonzero(eog)], bos=int(LL.llama_vocab_bos(vocab)),
            path=p.path,
        )
        self._cached = []
        desc = ctypes.create_string_buffer(256)
        LL.llama_model_desc(model, desc, len(desc))
        return Loaded(
            id=req_id, path=p.path, description=desc.value.decode("utf-8", "replace"),
            n_ctx=self._m.n_ctx, n_ctx_train=n_ctx_train, n_ctx_seq=int(LL.llama_n_ctx_seq(ctx)),
            n_vocab=n_vocab, n_params=int(LL.llama_model_n_params(model)),
            model_bytes=int(LL.llama_model_size(model)), n_gpu_layers=n_gpu_layers,
            gpu_offload=offload, recurrent=bool(LL.llama_model_is_recurrent(model)),
            hybrid=bool(LL.llama_model_is_hybrid(model)), n_threads=threads,
            load_s=time.perf_counter() - t0,
            chat_template=(LL.llama_model_chat_template(model, None) or b"").decode("utf-8", "replace"),
            bos_text=self._token_text(int(LL.llama_vocab_bos(vocab))),
            eos_text=self._token_text(int(LL.llama_vocab_eos(vocab))),
        )

    def _token_text(self, token: int) -> str:
        """The literal text of a special token (for templates' ``bos_token``), or ''."""
        if self._m is None or not (0 <= token < self._m.n_vocab):
            return ""
        return (LL.llama_vocab_get_text(self._m.vocab, token) or b"").decode("utf-8", "replace")

    def unload(self) -> None:
        m, self._m = self._m, None
        self._cached = []
        if m is not None:
            LL.llama_batch_free(m.batch)
            LL.llama_free(m.ctx)
            LL.llama_model_free(m.model)

    @property
    def loaded(self) -> bool:
        return self._m is not None

    def _require(self) -> _Model:
        if self._m is None:
            raise RequestError("state", "no model is loaded")
        return self._m

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        m = self._require()
        data = text.encode("utf-8")
        cap = len(data) + 16
        arr = (LL.llama_token * cap)()
        n = LL.llama_tokenize(m.vocab, data, len(data), arr, cap, add_special, True)
        if n < 0:
            cap = -n
            arr = (LL.llama_token * cap)()
            n = LL.llama_tokenize(m.vocab, data, len(data), arr, cap, add_special, True)
        tokens = list(arr[:n])
        if len(tokens) >= 2 and tokens[0] == tokens[1] == m.bos:
            tokens = tokens[1:]  # the template wrote BOS itself and the tokenizer added another
        return tokens

    def _piece(self, token: int, buf: ctypes.Array) -> bytes:
        n = LL.llama_token_to_piece(self._m.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = LL.llama_token_to_piece(self._m.vocab, token, big, len(big), 0, False)
            return big.raw[:n]
        return buf.raw[:n]

    # ------------------------------------------------------------------ sampling
    def _chain(self, s: SamplingParams, forbid: list[int]) -> object:
        """llama.cpp's native sampler chain; ``forbid`` tokens get -inf (used for the first token).

        Penalties come after top-k: on the full vocabulary they cost one hash lookup per token
        per step (the native docs say so too), on 40 candidates nothing.
        """
        chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
        add = lambda smpl: LL.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if forbid:
            biases = (LL.llama_logit_bias * len(forbid))(
                *[LL.llama_logit_bias(t, float("-inf")) for t in forbid])
            add(LL.llama_sampler_init_logit_bias(self._m.n_vocab, len(forbid), biases))
        if s.greedy:
            if s.repeat_penalty != 1.0:
                add(LL.llama_sampler_init_top_k(64))
                add(LL.llama_sampler_init_penalties(self._m.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
            add(LL.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(LL.llama_sampler_init_top_k(s.top_k))
        if s.repeat_penalty != 1.0:
            add(LL.llama_sampler_init_penalties(self._m.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
        if s.top_p < 1.0:
            add(LL.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(LL.llama_sampler_init_min_p(s.min_p, 1))
        add(LL.llama_sampler_init_temp(s.temperature))
        add(LL.llama_sampler_init_dist(s.seed))
        return chain

    # ------------------------------------------------------------------ generation
    def _decode(self, tokens: list[int], pos0: int, cancel: threading.Event) -> None:
        """Prefill ``tokens`` at ``pos0`` in chunks of n_batch; logits only for the last one."""
        m = self._require()
        b = m.batch
        for start in range(0, len(tokens), m.n_batch):
            if cancel.is_set():
                raise RequestError("cancelled", "cancelled")
            chunk = tokens[start:start + m.n_batch]
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos0 + start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 0
            b.logits[len(chunk) - 1] = 1 if start + len(chunk) == len(tokens) else 0
            b.n_tokens = len(chunk)
            self._check(LL.llama_decode(m.ctx, b))
            self._cached.extend(chunk)

    def _check(self, rc: int) -> None:
        if rc == 0:
            return
        if rc == 1:
            raise RequestError("context", "the context is full (no free KV cache slot)")
        if rc == 2:
            raise RequestError("cancelled", "cancelled")
        raise RequestError("runtime", f"llama_decode failed with code {rc}: {self._log.last_problem()}")

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the KV cache of the longest common prefix with the last request (multi-turn chat)."""
        m = self._require()
        n = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1)  # at least one token must be decoded to get logits
        if n < len(self._cached):
            if not LL.llama_memory_seq_rm(m.mem, 0, n, -1):
                LL.llama_memory_clear(m.mem, True)  # recurrent state cannot roll back partially
                n = 0
            del self._cached[n:]
        return n

    def generate(self, req: GenerateRequest, cancel: threading.Event) -> Done:
        m = self._require()
        sampling = SamplingParams.from_dict(req.sampling)
        tokens = self.tokenize(req.prompt)
        if not tokens:
            raise RequestError("params", "the prompt is empty")
        room = m.n_ctx - len(tokens)
        if room < 2:
            raise RequestError("context", f"the conversation is {len(tokens)} tokens long but the context "
                                          f"holds {m.n_ctx}; start a new chat or load with a larger context")
        max_tokens = max(1, min(req.max_tokens, room))
        t0 = time.perf_counter()
        n_reused = self._reuse_prefix(tokens)
        try:
            self._decode(tokens[n_reused:], n_reused, cancel)
        except RequestError:
            self._cached.clear()
            LL.llama_memory_clear(m.mem, True)
            raise
        t_prefill = time.perf_counter()
        self._emit(Started(id=req.id, n_prompt=len(tokens), n_reused=n_reused))
        forbid = m.eog_ids if req.no_empty else []
        first_chain = self._chain(sampling, forbid) if forbid else None
        chain = self._chain(sampling, [])
        try:
            return self._loop(req, m, chain, first_chain, len(tokens), n_reused, max_tokens,
                              t0, t_prefill, cancel)
        except RequestError:
            self._cached.clear()
            LL.llama_memory_clear(m.mem, True)
            raise
        finally:
            LL.llama_sampler_free(chain)
            if first_chain:
                LL.llama_sampler_free(first_chain)

    def _loop(self, req: GenerateRequest, m: _Model, chain: object, first_chain: object | None,
              n_prompt: int, n_reused: int, max_tokens: int, t0: float, t_prefill: float,
              cancel: threading.Event) -> Done:
        """The hot loop: decode, then emit the previous token while the backend works, then sample."""
        ctx, b, eog = m.ctx, m.batch, m.eog
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buf = ctypes.create_string_buffer(256)
        out_tokens: list[int] = []
        text_parts: list[str] = []
        pending_text: list[str] = []
        pending_tokens: list[int] = []
        last_flush = time.perf_counter()
        stop = "length"
        n_decoded = 0

        tok = LL.llama_sampler_sample(first_chain or chain, ctx, -1)
        if first_chain:
            LL.llama_sampler_accept(chain, tok)
        t_first = time.perf_counter()
        pos = n_prompt
        while True:
            if eog[tok]:
                stop = "eog"
                break
            out_tokens.append(tok)
            if len(out_tokens) >= max_tokens:
                piece = decoder.decode(self._piece(tok, buf))
                text_parts.append(piece)
                pending_text.append(piece)
                pending_tokens.append(tok)
                break
            b.token[0] = tok
            b.pos[0] = pos
            b.n_seq_id[0] = 1
            b.seq_id[0][0] = 0
            b.logits[0] = 1
            b.n_tokens = 1
            rc = LL.llama_decode(ctx, b)
            # while the backend works: detokenise and stream the token just submitted
            piece = decoder.decode(self._piece(tok, buf))
            text_parts.append(piece)
            pending_text.append(piece)
            pending_tokens.append(tok)
            now = time.perf_counter()
            if req.stream and now - last_flush >= _DELTA_INTERVAL_S:
                self._emit(Delta(id=req.id, text="".join(pending_text), tokens=pending_tokens))
                pending_text, pending_tokens, last_flush = [], [], now
            if rc != 0:
                if rc == 1:
                    stop = "context"
                    break
                self._check(rc)
            self._cached.append(tok)
            n_decoded += 1
            pos += 1
            if cancel.is_set():
                stop = "cancelled"
                break
            tok = LL.llama_sampler_sample(chain, ctx, -1)
        tail = decoder.decode(b"", final=True)
        text_parts.append(tail)
        pending_text.append(tail)
        if req.stream and (pending_tokens or tail):
            self._emit(Delta(id=req.id, text="".join(pending_text), tokens=pending_tokens))
        t_end = time.perf_counter()
        n_gen = len(out_tokens)
        decode_s = t_end - t_first
        return Done(
            id=req.id, text="".join(text_parts), tokens=out_tokens, n_prompt=n_prompt,
            n_reused=n_reused, stop_reason=stop, prefill_s=t_prefill - t0,
            first_token_s=t_first - t0, decode_s=decode_s,
            tokens_per_s=n_decoded / decode_s if n_decoded and decode_s > 0 else 0.0,
        )

    # ------------------------------------------------------------------ stats
    def stats(self, req_id: int) -> Stats:
        rss = psutil.Process().memory_info().rss
        if self._m is None:
            return Stats(id=req_id, loaded=False, n_ctx=0, kv_pos_min=-1, kv_pos_max=-1,
                         n_cached_tokens=0, rss_bytes=rss)
        return Stats(
            id=req_id, loaded=True, n_ctx=self._m.n_ctx,
            kv_pos_min=int(LL.llama_memory_seq_pos_min(self._m.mem, 0)),
            kv_pos_max=int(LL.llama_memory_seq_pos_max(self._m.mem, 0)),
            n_cached_tokens=len(self._cached), rss_bytes=rss,
        )
