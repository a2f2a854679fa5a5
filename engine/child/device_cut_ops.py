"""The ggml graph pieces of the candidate cut on the device (engine.child.device_cut).

Why a module of its own: these are ggml calls through libllama's handle, built while llama.cpp
builds a decode graph; the sampler that places them (device_cut) is about when and where.

Two forms. :func:`cut` cuts one row (a sequence's view of the logits, as llama.cpp hands each
backend sampler its row). :func:`cut_rows` cuts every row of the step's logits at once, in a
dozen operations whatever the number of sequences: a 16-sequence step with a cut per row added
0.4 ms of small kernels to the decode on an H200 (benchmarks/results/step-sampling-2026-12-05-h200.json),
more than the logits copy it saved. It keeps the k best of each row exactly (ties aside): the
chunks' maxima, the k best chunks, their tokens, and the k best of those, so a row comes back
as k logits and their token ids, and the CPU chain samples from k tokens, not 128k.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.topk_cut import CHUNK, worth_cutting

_POOL_MAX = 0  # enum ggml_op_pool: GGML_OP_POOL_MAX
_F32, _I32 = 0, 26  # enum ggml_type
_P = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", _P), ("no_alloc", ctypes.c_bool)]


def ggml_fn(name: str, res: Any, *args: Any) -> Any:
    """A ggml function through libllama's handle (dlsym also searches its dependencies)."""
    f = getattr(LL._lib, name)
    f.restype, f.argtypes = res, list(args)
    return f


_i64, _int, _f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_float
view_1d = ggml_fn("ggml_view_1d", _P, _P, _P, _i64, ctypes.c_size_t)
view_2d = ggml_fn("ggml_view_2d", _P, _P, _P, _i64, _i64, ctypes.c_size_t, ctypes.c_size_t)
view_3d = ggml_fn(
    "ggml_view_3d", _P, _P, _P, _i64, _i64, _i64, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t
)
reshape_3d = ggml_fn("ggml_reshape_3d", _P, _P, _P, _i64, _i64, _i64)
repeat = ggml_fn("ggml_repeat", _P, _P, _P, _P)
new_tensor_2d = ggml_fn("ggml_new_tensor_2d", _P, _P, _int, _i64, _i64)
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
dev_type = ggml_fn("ggml_backend_dev_type", _int, _P)
dev_name = ggml_fn("ggml_backend_dev_name", ctypes.c_char_p, _P)
_GPU = 1  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_GPU


def on_gpu(buft: int) -> bool:
    """Whether ``buft`` (where llama.cpp keeps the logits) is a discrete GPU's memory in this
    machine. Not an RPC server's ("RPC<n>[host:port]", which says GPU too): there each row's
    candidates would come back in a network round trip of their own, where the whole rows come
    in one (``copy_tensor_async_rows``, src/llama-context.cpp)."""
    device = buft_device(buft)
    return bool(device) and dev_type(device) == _GPU and not (dev_name(device) or b"").startswith(b"RPC")


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


class Tensor(ctypes.Structure):
    """ggml.h's ``struct ggml_tensor`` up to ``view_offs``: what tells a row's view which row of
    the step's logits it is (:func:`row_of`). Checked against ggml at import (``LAYOUT_OK``)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", _P),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", _P * 10),
        ("view_src", _P),
        ("view_offs", ctypes.c_size_t),
    ]


def row_of(t: int) -> tuple[int, int] | None:
    """(the 2-D logits tensor, row) where ``t`` is one whole row of one (llama.cpp's view of a
    sequence's row, src/llama-graph.cpp ``build_sampling``), else None."""
    v = Tensor.from_address(t)
    if not v.view_src or v.ne[1] != 1:
        return None
    parent = Tensor.from_address(v.view_src)
    n = parent.ne[0]
    if (
        parent.type != _F32
        or n != v.ne[0]
        or parent.nb[1] != 4 * n
        or parent.ne[2] != 1
        or v.view_offs % parent.nb[1]
    ):
        return None
    return int(v.view_src), int(v.view_offs // parent.nb[1])


def _layout_ok() -> bool:
    ctx = ggml_init(_InitParams(1 << 16, None, True))
    try:
        a = new_tensor_2d(ctx, _F32, 1000, 3)
        row = view_1d(ctx, a, 1000, 2 * 4000)
        t = Tensor.from_address(a)
        return tuple(t.ne) == (1000, 3, 1, 1) and t.nb[1] == 4000 and row_of(row) == (a, 2)
    finally:
        ggml_free(ctx)


#: ggml's tensor struct is the one :class:`Tensor` reads (else every row is cut on its own).
LAYOUT_OK = _layout_ok()


def cut_rows(ctx: int, logits: int, k: int) -> tuple[int, int]:
    """(logits, token ids), both [k, rows], of every row of the 2-D ``logits`` [n_vocab, rows]:
    each row's k best. The maxima of its 64-token chunks; the k chunks with the highest; their
    tokens (with the last, short chunk, always); the k best of those. At least k tokens reach
    the k-th largest chunk maximum, one in each of those chunks, so the row's k best are among
    the tokens gathered."""
    t = Tensor.from_address(logits)
    n, rows, stride = int(t.ne[0]), int(t.ne[1]), int(t.nb[1])
    n_chunks = n // CHUNK
    n_full = n_chunks * CHUNK
    best = top_k(ctx, pool_1d(ctx, logits, _POOL_MAX, CHUNK, CHUNK, 0), k)  # [k, rows]: chunk numbers
    chunks = view_3d(ctx, logits, CHUNK, n_chunks, rows, CHUNK * 4, stride, 0)
    vals = reshape_2d(ctx, get_rows(ctx, chunks, best), CHUNK * k, rows)
    table = reshape_2d(ctx, arange(ctx, 0.0, float(n_full), 1.0), CHUNK, n_chunks)  # exact below 2**24
    ids = reshape_2d(ctx, get_rows(ctx, table, reshape_1d(ctx, best, k * rows)), CHUNK * k, rows)
    if n > n_full:  # the last, short chunk: always gathered
        tail = view_2d(ctx, logits, n - n_full, rows, stride, n_full * 4)
        vals = concat(ctx, vals, tail, 0)
        ids = concat(ctx, ids, repeat(ctx, arange(ctx, float(n_full), float(n), 1.0), tail), 0)
    m = CHUNK * k + n - n_full
    pick = top_k(ctx, vals, k)  # [k, rows]: positions among the gathered
    out = get_rows(ctx, reshape_3d(ctx, vals, 1, m, rows), pick)
    tok = get_rows(ctx, reshape_3d(ctx, ids, 1, m, rows), pick)
    return reshape_2d(ctx, out, k, rows), cast(ctx, reshape_2d(ctx, tok, k, rows), _I32)


def supported(buft: int, k: int) -> bool:
    """Whether the device of ``buft`` runs every operation of both cuts (llama.cpp probes its
    own samplers the same way, src/llama-sampler.cpp ``llama_sampler_backend_support``)."""
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
        for t in cut_rows(ctx, new_tensor_2d(ctx, _F32, n, 3), k):
            build_forward_expand(gf, t)
        return all(supports_op(device, graph_node(gf, i)) for i in range(graph_n_nodes(gf)))
    finally:
        ggml_free(ctx)
