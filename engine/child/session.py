"""llama.cpp itself: one model and one context, driven through the low-level ctypes API.

Runs only inside the runtime child (``engine.child``): importing this module loads the native
library, and anything in there may abort the process. The parent never imports it.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import gguf
import llama_cpp  # noqa: F401  (installs its own log callback; engine.child.native_log replaces it)
import llama_cpp.llama_cpp as LL
import numpy as np
import psutil

from engine.plan.alloc_failure import describe_allocation_failure
from engine.protocol import Loaded, LoadParams, Progress, Stats
from engine.child.decode import GenerationMixin, RequestError
from engine.child.native_log import NativeLog

Emit = Callable[[object], None]

_SPLIT = {"none": LL.LLAMA_SPLIT_MODE_NONE, "layer": LL.LLAMA_SPLIT_MODE_LAYER,
          "row": LL.LLAMA_SPLIT_MODE_ROW, "tensor": LL.LLAMA_SPLIT_MODE_TENSOR}
_FLASH = {"auto": LL.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": LL.LLAMA_FLASH_ATTN_TYPE_ENABLED,
          "off": LL.LLAMA_FLASH_ATTN_TYPE_DISABLED}
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


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


class LlamaSession(GenerationMixin):
    """Owns at most one loaded model; every method runs on the child's main thread."""

    def __init__(self, emit: Emit, log: NativeLog) -> None:
        self._emit = emit
        self._log = log
        self._m: _Model | None = None
        self._cached: list[int] = []  # tokens whose KV is in sequence 0, for prefix reuse
        LL.llama_backend_init()

    # ------------------------------------------------------------------ load / unload
    def load(self, req_id: int, p: LoadParams, cancel: threading.Event) -> Loaded:
        """Load a model and create its context; with ``dry_run`` only size everything.

        The memory-related log lines of the load travel back with the result: they are
        llama.cpp's own account of every buffer, the ground truth for the memory plan.
        """
        self.unload()
        if not os.path.isfile(p.path):
            raise RequestError("model", f"model file not found: {p.path}")
        t0 = time.perf_counter()
        offload = bool(LL.llama_supports_gpu_offload())
        mp, keep = self._model_params(req_id, p, offload, cancel)
        self._log.start_capture()
        self._log.recent_errors = []  # a sentence about this load must not quote an older one
        try:
            model = LL.llama_model_load_from_file(os.fsencode(p.path), mp)
            if not model:
                if cancel.is_set():
                    raise RequestError("cancelled", "loading was cancelled")
                why = (describe_allocation_failure(self._log.recent_errors)
                       or self._log.last_problem() or "llama.cpp refused the file")
                raise RequestError("model", f"could not load {os.path.basename(p.path)}: {why}")
            try:
                loaded = self._create_context(req_id, p, model, offload, mp.n_gpu_layers, t0)
            except BaseException:
                LL.llama_model_free(model)
                raise
        finally:
            lines = self._log.stop_capture()
            del keep
        loaded = replace(loaded, memory_log=lines, dry_run=p.dry_run)
        if p.dry_run:
            self.unload()
        return loaded

    def _model_params(self, req_id: int, p: LoadParams, offload: bool,
                      cancel: threading.Event) -> tuple[LL.llama_model_params, list[object]]:
        """llama_model_params plus the ctypes objects that must outlive the load call."""
        mp = LL.llama_model_default_params()
        mp.n_gpu_layers = (999 if p.n_gpu_layers < 0 else p.n_gpu_layers) if offload else 0
        if p.split_mode not in _SPLIT:
            raise RequestError("params", f"split mode must be none, layer, row or tensor, not {p.split_mode!r}")
        mp.split_mode = _SPLIT[p.split_mode]
        mp.main_gpu = p.main_gpu
        keep: list[object] = []
        if p.tensor_split:
            n = int(LL.llama_max_devices())
            ratios = (ctypes.c_float * n)(*[float(x) for x in list(p.tensor_split)[:n]])
            mp.tensor_split = ratios
            keep.append(ratios)
        if p.dry_run:
            mp.no_alloc = True  # sizes only; needs load_mode NONE or llama.cpp aborts
            mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
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
        keep.append(progress_cb)
        return mp, keep

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
        cp.offload_kqv = p.offload_kqv
        cp.n_rs_seq = max(0, p.n_rs_seq)
        ctx = LL.llama_init_from_model(model, cp)
        if not ctx:
            why = (describe_allocation_failure(self._log.recent_errors)
                   or self._log.last_problem() or "unknown reason")
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
