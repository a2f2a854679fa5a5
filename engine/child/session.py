"""llama.cpp itself: one model and one context, driven through the low-level ctypes API.

Runs only inside the runtime child (``engine.child``): importing this module loads the native
library, and anything in there may abort the process. The parent never imports it.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import llama_cpp  # noqa: F401  (installs its own log callback; engine.child.native_log replaces it)
import llama_cpp.llama_cpp as LL
import numpy as np
import psutil

from engine.child.errors import ErrorKind, RequestError
from engine.child.io import Emit
from engine.child.model import Model, flash_type, ggml_type_id
from engine.child.native_log import NativeLog
from engine.child.overrides import set_cpu_moe
from engine.child.sampler import Samplers
from engine.protocol import Loaded, LoadParams, Progress, Stats


def _resolved_flash(lines: list[str], asked: str) -> str:
    from engine.child.selfdraft_context import resolved_flash

    return resolved_flash(lines, asked)


def loaded_mode(lines: list[str], asked: str) -> str:
    """How llama.cpp read the weights, from its ``load_tensors: ... (load_mode = NAME)`` line (the
    first: the target's), which names what its AUTO chose; ``asked`` where no line says."""
    for line in lines:
        if m := re.search(r"\(load_mode = ([\w+]+)\)", line):
            return m[1]
    return asked


_SPLIT = {
    "none": LL.LLAMA_SPLIT_MODE_NONE,
    "layer": LL.LLAMA_SPLIT_MODE_LAYER,
    "row": LL.LLAMA_SPLIT_MODE_ROW,
    "tensor": LL.LLAMA_SPLIT_MODE_TENSOR,
}


class LlamaSession:
    """Owns at most one loaded :class:`Model`; every method runs on the child's main thread.

    The public interface the rest of the child uses: :meth:`load`/:meth:`unload`,
    :attr:`model` and :meth:`require` (the loaded model, see ``engine.child.model``),
    :meth:`tokenize`, :meth:`stats`, :meth:`model_params` (for a second model, the draft),
    :attr:`load_params` (what the target was loaded with), :attr:`samplers` (the device sampler
    chain attached to the context), :attr:`draft` (``engine.child.draft`` keeps the draft model
    here), :attr:`emit` and :attr:`log`.
    """

    def __init__(self, emit: Emit, log: NativeLog) -> None:
        self.emit = emit
        self.log = log
        self.model: Model | None = None
        self.load_params: LoadParams | None = None
        self.samplers = Samplers()
        self.draft: Any = None  # an engine.child.draft.Draft or a selfdraft.SelfDraft (assistant)
        #: The model's own MTP drafting context (engine.child.selfdraft.SelfDraft) when loaded with
        #: settings.mtp, and the flash-attention choice the target's context resolved to.
        self.mtp: Any = None
        self.flash_resolved = "auto"
        LL.llama_backend_init()

    # ------------------------------------------------------------------ load / unload
    def load(
        self,
        req_id: int,
        p: LoadParams,
        cancel: threading.Event,
        then: Callable[[LlamaSession, threading.Event], None] | None = None,
    ) -> Loaded:
        """Load a model and create its context; with ``dry_run`` only size everything.
        ``then`` runs right after, inside the same log capture (before a dry run unloads).

        The memory-related log lines of the load travel back with the result: they are
        llama.cpp's own account of every buffer, the ground truth for the memory plan.
        """
        self.unload()
        self.load_params = p  # a draft builds its context with the target's settings
        if not os.path.isfile(p.path):
            raise RequestError(ErrorKind.MODEL, f"model file not found: {p.path}")
        t0 = time.perf_counter()
        offload = bool(LL.llama_supports_gpu_offload())
        s = p.settings
        mp, keep = self.model_params(
            req_id,
            p.path,
            s.n_gpu_layers,
            offload,
            cancel,
            split_mode=s.split_mode,
            main_gpu=s.main_gpu,
            tensor_split=s.tensor_split,
            dry_run=p.dry_run,
            load_mtp=s.mtp,
            n_cpu_moe=s.n_cpu_moe,
            load_mode=s.load_mode,
        )
        self.log.start_capture()
        try:
            model = self.load_model_file(p.path, mp, cancel)
            try:
                loaded = self._create_context(req_id, p, model, offload, mp.n_gpu_layers, t0)
            except BaseException:
                LL.llama_model_free(model)
                raise
            target_lines = self.log.captured()
            mode = loaded_mode(target_lines, "none" if p.dry_run else s.load_mode)
            loaded = replace(loaded, **self._create_mtp(p), n_log_target=len(target_lines), load_mode=mode)
            if then is not None:  # e.g. size an assistant's context next to a dry-run target
                then(self, cancel)
        finally:
            lines = self.log.stop_capture()
            del keep
        loaded = replace(loaded, memory_log=lines, dry_run=p.dry_run)
        if p.dry_run:
            self.unload()
        return loaded

    def load_model_file(self, path: str, mp: Any, cancel: threading.Event, what: str = "") -> Any:
        """``llama_model_load_from_file`` for the target, a draft or an assistant (``what`` names
        it in the messages); a refusal or a cancel is one RequestError with llama.cpp's reason."""
        self.log.recent_errors = []  # a sentence about this load must not quote an older one
        model = LL.llama_model_load_from_file(os.fsencode(path), mp)
        if not model:
            if cancel.is_set():
                raise RequestError(ErrorKind.CANCELLED, f"loading {what + ' ' if what else ''}was cancelled")
            why = self.log.failure_reason("llama.cpp refused the file")
            raise RequestError(ErrorKind.MODEL, f"could not load {os.path.basename(path)}: {why}")
        return model

    def model_params(
        self,
        req_id: int,
        path: str,
        n_gpu_layers: int,
        offload: bool,
        cancel: threading.Event,
        *,
        split_mode: str = "layer",
        main_gpu: int = 0,
        tensor_split: tuple[float, ...] = (),
        dry_run: bool = False,
        load_mtp: bool = False,
        n_cpu_moe: int = 0,
        load_mode: str = "mmap",
    ) -> tuple[LL.llama_model_params, list[object]]:
        """llama_model_params plus the ctypes objects that must outlive the load call; load
        progress goes out as Progress events of ``req_id`` and stops the load on ``cancel``.
        ``load_mode`` "mmap" keeps llama.cpp's default (AUTO: mapped where the devices can),
        "none" copies the weights in (PlanSettings.load_mode: the plan sizes what is loaded)."""
        mp = LL.llama_model_default_params()
        mp.n_gpu_layers = (999 if n_gpu_layers < 0 else n_gpu_layers) if offload else 0
        if split_mode not in _SPLIT:
            raise RequestError(
                ErrorKind.PARAMS, f"split mode must be none, layer, row or tensor, not {split_mode!r}"
            )
        mp.split_mode = _SPLIT[split_mode]
        mp.main_gpu = main_gpu
        if load_mode not in ("mmap", "none"):
            raise RequestError(ErrorKind.PARAMS, f"load mode must be mmap or none, not {load_mode!r}")
        if load_mode == "none":
            mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
        mp.load_mtp = load_mtp  # nextn layers: skipped unless a drafting context will use them
        keep: list[object] = set_cpu_moe(mp, n_cpu_moe)  # --n-cpu-moe (engine.plan.cpu_moe)
        if tensor_split:
            n = int(LL.llama_max_devices())
            ratios = (ctypes.c_float * n)(*[float(x) for x in list(tensor_split)[:n]])
            mp.tensor_split = ratios
            keep.append(ratios)
        if dry_run:
            mp.no_alloc = True  # sizes only; needs load_mode NONE or llama.cpp aborts
            mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
        last = [-1.0]
        emit = self.emit

        def on_progress(fraction: float, _ud: object) -> bool:
            try:
                if fraction - last[0] >= 0.01 or fraction >= 1.0:
                    last[0] = fraction
                    emit(Progress(id=req_id, fraction=float(fraction)))
                return not cancel.is_set()
            except Exception:
                return False

        progress_cb = LL.llama_progress_callback(on_progress)
        mp.progress_callback = progress_cb
        keep.append(progress_cb)
        return mp, keep

    def _create_context(
        self, req_id: int, p: LoadParams, model: object, offload: bool, n_gpu_layers: int, t0: float
    ) -> Loaded:
        s = p.settings
        n_ctx_train = int(LL.llama_model_n_ctx_train(model))
        cp = LL.llama_context_default_params()
        cp.n_ctx = max(0, s.n_ctx)  # 0: the training context, as llama.cpp (and the plan) read it
        cp.n_batch = max(32, s.n_batch)
        cp.n_ubatch = max(32, min(s.n_ubatch, cp.n_batch))
        cp.n_seq_max = max(1, s.n_seq_max)
        threads = p.n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 4
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = flash_type(s.flash_attn)
        cp.type_k = ggml_type_id(s.type_k)
        cp.type_v = ggml_type_id(s.type_v)
        cp.swa_full = s.swa_full
        cp.kv_unified = s.kv_unified
        cp.offload_kqv = s.offload_kqv
        cp.n_rs_seq = max(0, s.n_rs_seq)
        ctx = LL.llama_init_from_model(model, cp)
        if not ctx:
            why = self.log.failure_reason("unknown reason")
            raise RequestError(
                ErrorKind.PARAMS, f"could not create a context of {cp.n_ctx or n_ctx_train} tokens: {why}"
            )
        vocab = LL.llama_model_get_vocab(model)
        n_vocab = int(LL.llama_vocab_n_tokens(vocab))
        eog = np.fromiter(
            (bool(LL.llama_vocab_is_eog(vocab, i)) for i in range(n_vocab)), dtype=bool, count=n_vocab
        )
        m = self.model = Model(
            model=model,
            ctx=ctx,
            vocab=vocab,
            mem=LL.llama_get_memory(ctx),
            batch=LL.llama_batch_init(cp.n_batch, 0, 1),
            n_ctx=int(LL.llama_n_ctx(ctx)),
            n_batch=int(cp.n_batch),
            n_vocab=n_vocab,
            eog=eog,
            eog_ids=[int(i) for i in np.flatnonzero(eog)],
            bos=int(LL.llama_vocab_bos(vocab)),
            path=p.path,
            log=self.log,
        )
        desc = ctypes.create_string_buffer(256)
        LL.llama_model_desc(model, desc, len(desc))
        return Loaded(
            id=req_id,
            path=p.path,
            description=desc.value.decode("utf-8", "replace"),
            n_ctx=m.n_ctx,
            n_ctx_train=n_ctx_train,
            n_ctx_seq=m.n_ctx_seq,
            n_vocab=n_vocab,
            n_params=int(LL.llama_model_n_params(model)),
            model_bytes=int(LL.llama_model_size(model)),
            n_gpu_layers=n_gpu_layers,
            gpu_offload=offload,
            recurrent=bool(LL.llama_model_is_recurrent(model)),
            hybrid=bool(LL.llama_model_is_hybrid(model)),
            n_threads=threads,
            load_s=time.perf_counter() - t0,
            chat_template=(LL.llama_model_chat_template(model, None) or b"").decode("utf-8", "replace"),
            bos_text=m.token_text(int(LL.llama_vocab_bos(vocab))),
            eos_text=m.token_text(int(LL.llama_vocab_eos(vocab))),
        )

    def _create_mtp(self, p: LoadParams) -> dict[str, Any]:
        """The model's own drafting context, right after the target's (so the load's memory log
        holds both); a model that cannot draft for itself still loads, with the reason."""
        m = self.require()
        self.flash_resolved = _resolved_flash(self.log.captured(), p.settings.flash_attn)
        n_nextn = int(LL.llama_model_n_layer_nextn(m.model))
        if not p.settings.mtp:
            return {"n_layer_nextn": n_nextn}
        from engine.child.selfdraft_context import create

        try:
            self.mtp = create("mtp", m, p.settings, self.flash_resolved, self.log)
        except RequestError as exc:
            return {"n_layer_nextn": n_nextn, "mtp": str(exc)}
        return {"n_layer_nextn": n_nextn, "mtp": "ready"}

    def unload(self) -> None:
        """Drafting contexts go first: an assistant's context holds views of the target's KV."""
        if self.mtp is not None:
            self.mtp.free()
            self.mtp = None
        d = self.draft
        if d is not None and getattr(d, "shared", False):
            self.draft = None  # an assistant cannot outlive the target whose memory it reads
            d.free()
            LL.llama_model_free(d.model)
        elif d is not None:
            d.free_context()  # a draft model keeps its weights and gets a new context on next use
        m, self.model = self.model, None
        if m is not None:
            m.free()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def require(self) -> Model:
        """The loaded model, or a ``state`` error saying that none is."""
        if self.model is None:
            raise RequestError(ErrorKind.STATE, "no model is loaded")
        return self.model

    # ------------------------------------------------------------------ tokens, stats
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.require().tokenize(text, add_special)

    def stats(self, req_id: int) -> Stats:
        rss = psutil.Process().memory_info().rss
        m = self.model
        if m is None:
            return Stats(
                id=req_id,
                loaded=False,
                n_ctx=0,
                kv_pos_min=-1,
                kv_pos_max=-1,
                n_cached_tokens=0,
                rss_bytes=rss,
            )
        lo, hi = m.pos_range(0)
        return Stats(
            id=req_id,
            loaded=True,
            n_ctx=m.n_ctx,
            kv_pos_min=lo,
            kv_pos_max=hi,
            n_cached_tokens=len(m.cached),
            rss_bytes=rss,
        )
