"""The batch loop's candidate cut on the device: a llama.cpp backend sampler of our own.

Why: at sixteen sequences a step's sampling read 16 rows of 128k logits on the host (1.3 ms
inside the server on the H100 run, benchmarks/results/server-2026-12-05-h100-native.json) after
the device had copied them there (7.8 MiB a step); llama-batched-bench does neither. The native
sampler's idea (engine/child/rowsample.c) runs on the device instead, as ggml operations in the
decode graph: the row's maximum per 64-token chunk (``ggml_pool_1d``), the k chunks with the
highest maxima (``ggml_top_k`` over about 2k values), and their tokens (``ggml_get_rows``),
plus the last, short chunk. The k best tokens of the row are among them: at least k tokens reach
the k-th largest chunk maximum, one in each of those chunks. What comes back is 64·k logits and
their token ids; the request's own CPU chain, which starts with top-k, samples from them through
``llama_sampler_sample`` (src/llama-sampler.cpp: it reads a backend sampler's logits and
candidates), so the token is the one the full row gives, but for exact ties in the k best.

llama.cpp's own backend top-k cannot stand in: on CUDA it is one CUB top-k call per row over the
whole vocabulary, or a full argsort where CUB's top-k is missing (ggml/src/ggml-cuda/top-k.cu).

The sampler is attached as a chain per sequence (``llama_set_sampler``) like the device chains
of engine.child.batch_backend; llama.cpp calls ``backend_apply`` only while it builds a graph
(graphs are reused between steps), so Python runs there, never per step. ``backend_init`` asks
the device whether it supports every operation (as llama.cpp's own samplers do), so a device
that cannot leaves the rows whole. Off unless ``KVDECK_DEVICE_CUT=1``: on an H200 it added
0.4 ms of small kernels to a 16-sequence step and saved less (sampling 0.22 ms against the native
sampler's 0.21 ms on whole rows; steady decode 5 % lower at 16 clients, 1 % higher at 64:
benchmarks/results/server-2026-12-05-h200.json, step-sampling-2026-12-05-h200.json).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.batch_backend import SeqChains
from engine.child.model import Model
from engine.child.slots import Slot
from engine.child.topk_cut import CHUNK, worth_cutting

_POOL_MAX = 0  # enum ggml_op_pool: GGML_OP_POOL_MAX
_F32, _I32 = 0, 26  # enum ggml_type
_P = ctypes.c_void_p


def enabled() -> bool:
    """Whether the batch loop cuts candidates on the device (``KVDECK_DEVICE_CUT=1``)."""
    return os.environ.get("KVDECK_DEVICE_CUT", "0") == "1"


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", _P), ("no_alloc", ctypes.c_bool)]


def ggml_fn(name: str, res: Any, *args: Any) -> Any:
    """A ggml function through libllama's handle (dlsym also searches its dependencies)."""
    f = getattr(LL._lib, name)
    f.restype, f.argtypes = res, list(args)
    return f


_i64, _int, _f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_float
view_1d = ggml_fn("ggml_view_1d", _P, _P, _P, _i64, ctypes.c_size_t)
reshape_1d = ggml_fn("ggml_reshape_1d", _P, _P, _P, _i64)
reshape_2d = ggml_fn("ggml_reshape_2d", _P, _P, _P, _i64, _i64)
pool_1d = ggml_fn("ggml_pool_1d", _P, _P, _P, _int, _int, _int, _int)
top_k = ggml_fn("ggml_top_k", _P, _P, _P, _int)
get_rows = ggml_fn("ggml_get_rows", _P, _P, _P, _P)
arange = ggml_fn("ggml_arange", _P, _P, _f32, _f32, _f32)
cast = ggml_fn("ggml_cast", _P, _P, _P, _int)
concat = ggml_fn("ggml_concat", _P, _P, _P, _P, _int)
nelements = ggml_fn("ggml_nelements", _i64, _P)
element_size = ggml_fn("ggml_element_size", ctypes.c_size_t, _P)
ggml_init = ggml_fn("ggml_init", _P, _InitParams)
ggml_free = ggml_fn("ggml_free", None, _P)
new_tensor_1d = ggml_fn("ggml_new_tensor_1d", _P, _P, _int, _i64)
new_graph = ggml_fn("ggml_new_graph", _P, _P)
build_forward_expand = ggml_fn("ggml_build_forward_expand", None, _P, _P)
graph_n_nodes = ggml_fn("ggml_graph_n_nodes", _int, _P)
graph_node = ggml_fn("ggml_graph_node", _P, _P, _int)
buft_device = ggml_fn("ggml_backend_buft_get_device", _P, _P)
supports_op = ggml_fn("ggml_backend_dev_supports_op", ctypes.c_bool, _P, _P)


def cut(ctx: int, logits: int, candidates: int | None, k: int) -> tuple[int, int | None]:
    """(logits, token ids) of the row's candidates: every token of the k chunks with the highest
    maxima, then the last, short chunk. ``candidates``: the row's token ids where an earlier
    sampler already narrowed it (None: the row is the vocabulary)."""
    n = nelements(logits)
    if not worth_cutting(k, n):
        return logits, candidates or None
    n_chunks = n // CHUNK
    n_full = n_chunks * CHUNK
    full = view_1d(ctx, logits, n_full, 0)
    best = top_k(ctx, pool_1d(ctx, full, _POOL_MAX, CHUNK, CHUNK, 0), k)
    vals = reshape_1d(ctx, get_rows(ctx, reshape_2d(ctx, full, CHUNK, n_chunks), best), CHUNK * k)
    if candidates:
        table = view_1d(ctx, candidates, n_full, 0)
    else:
        table = arange(ctx, 0.0, float(n_full), 1.0)  # exact: ids below 2**24
    ids = reshape_1d(ctx, get_rows(ctx, reshape_2d(ctx, table, CHUNK, n_chunks), best), CHUNK * k)
    if not candidates:
        ids = cast(ctx, ids, _I32)
    if n > n_full:  # the last, short chunk: always candidates
        off = n_full * element_size(logits)
        vals = concat(ctx, vals, view_1d(ctx, logits, n - n_full, off), 0)
        rest = (
            view_1d(ctx, candidates, n - n_full, n_full * element_size(candidates))
            if candidates
            else cast(ctx, arange(ctx, float(n_full), float(n), 1.0), _I32)
        )
        ids = concat(ctx, ids, rest, 0)
    return vals, ids


def supported(buft: int, k: int) -> bool:
    """Whether the device of ``buft`` runs every operation of the cut (llama.cpp probes its own
    samplers the same way, src/llama-sampler.cpp ``llama_sampler_backend_support``)."""
    device = buft_device(buft)
    if not device:
        return True  # the CPU backend runs them all
    n = max(128 * 1024, 2 * k * CHUNK) + 7  # a row the cut cuts, with a short last chunk
    ctx = ggml_init(_InitParams(1 << 20, None, True))  # tensor and graph overheads only, no data
    try:
        gf = new_graph(ctx)
        for with_ids in (False, True):
            logits = new_tensor_1d(ctx, _F32, n)
            ids = new_tensor_1d(ctx, _I32, n) if with_ids else None
            for t in cut(ctx, logits, ids, k):
                build_forward_expand(gf, t)
        return all(supports_op(device, graph_node(gf, i)) for i in range(graph_n_nodes(gf)))
    finally:
        ggml_free(ctx)


class ChunkCut:
    """One sampler over :func:`cut` for top-k ``k``; :meth:`chain` wraps it for ``llama_set_sampler``.

    The callbacks live as long as this object; the chain's ``free`` drops it from ``_LIVE``."""

    _LIVE: dict[int, ChunkCut] = {}

    def __init__(self, k: int) -> None:
        self.k = k
        self.on_device: bool | None = None  # what backend_init found (llama_set_sampler calls it)
        self.name = f"kvdeck-chunk-cut-{k}".encode()
        self.iface = LL.llama_sampler_i(
            name=LL.llama_sampler_i_name(lambda _s: self.name),
            accept=LL.llama_sampler_i_accept(),
            apply=LL.llama_sampler_i_apply(lambda _s, _cur: None),  # on the CPU: keeps every token
            reset=LL.llama_sampler_i_reset(),
            clone=LL.llama_sampler_i_clone(),
            free=LL.llama_sampler_i_free(self._free),
            backend_init=LL.llama_sampler_i_backend_init(self._init),
            backend_accept=LL.llama_sampler_i_backend_accept(),
            backend_apply=LL.llama_sampler_i_backend_apply(self._apply),
            backend_set_input=LL.llama_sampler_i_backend_set_input(),
            backend_reset=LL.llama_sampler_i_backend_reset(),
            copy_state=LL.llama_sampler_i_copy_state(),
        )
        self.smpl = LL.llama_sampler_init(ctypes.byref(self.iface), None)
        ChunkCut._LIVE[id(self)] = self

    def _init(self, _s: object, buft: int, _n: int) -> bool:
        self.on_device = supported(buft, self.k)
        return self.on_device

    def _apply(self, _s: object, ctx: int, _gf: int, data: Any) -> None:
        d = data.contents
        d.logits, d.candidates = cut(ctx, d.logits, d.candidates, self.k)

    def _free(self, _s: object) -> None:
        ChunkCut._LIVE.pop(id(self), None)

    def chain(self) -> object:
        """A chain holding this cut (llama_set_sampler takes chains only; it owns the cut)."""
        chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
        LL.llama_sampler_chain_add(chain, self.smpl)
        return chain


class SeqCuts(SeqChains):
    """The cut attached per sequence (engine.child.batch_backend.SeqChains keeps one chain per
    sequence while the next request there may use it too: attaching rebuilds the graphs)."""

    def __init__(self, m: Model) -> None:
        super().__init__(m, build=self._build)
        self.n_eog = len(m.eog_ids)
        self.made: ChunkCut | None = None
        self.unsupported = False  # the device lacks an operation: every row stays whole

    def _build(self, spec: Any) -> object:
        self.made = ChunkCut(spec[0][1])
        return self.made.chain()

    def k_for(self, s: Slot) -> int:
        """The device's k for the request on ``s``, 0 for whole rows. Only a CPU chain that
        starts with top-k (``Slot.cut``: no grammar; a penalty that only lowers logits starts
        with its own wider top-k, engine.child.sampler.chain_spec) samples the same from the
        candidates; log-probabilities read the whole row; drafting puts several rows of one
        sequence in a step (llama.cpp refuses those with a sampler attached). The k best of a
        first token exclude the end-of-generation tokens (its chain biases them away before its
        top-k), so the device keeps that many chunks more."""
        if not s.cut or s.w.req.logprobs >= 0 or s.w.req.draft:
            return 0
        k = s.cut + self.n_eog
        return k if worth_cutting(k, self.m.n_vocab) else 0

    def place(self, s: Slot) -> None:
        """Attach the cut for ``s`` to its sequence, or detach it: the rows must be whole."""
        k = 0 if self.unsupported else self.k_for(s)
        self.made = None
        s.cut_device = self.use(s.seq, (("chunk-cut", k),) if k else None) is not None
        if self.made is not None and not self.made.on_device:  # attached now, but not offloaded
            self.unsupported, s.cut_device = True, False
            self.drop(s.seq)
