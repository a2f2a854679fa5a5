"""llama.cpp's own reserve graph, node for node, as JSON: the input of benchmarks/sched_oracle.py.

    python -m tools.llama_graph_dump MODEL.gguf N_CTX TYPE_K TYPE_V FA N_UBATCH > graph.json

A child process (like tools/llama_dry_run.py: llama.cpp can abort). It loads the model with
`no_alloc` and `load_mode NONE` on the CPU (no tensor data is read: a sparse GGUF from
benchmarks/gpu_compute.py is enough), creates a context (swa_full off, as KV Deck's plans), and
builds the worst-case prompt graph with `llama_graph_reserve` (src/llama-context.cpp, exported
but C++-mangled: src/llama-ext.h) for N_UBATCH tokens and as many outputs. Then it walks every
node and source: name, op, type, ne, nb, bytes, flags, view source, sources, and the buffer a
pre-allocated tensor (weight or KV cache) lives in. The graph llama.cpp builds does not depend
on which backend runs it (the scheduler decides that later), so the CPU library gives the same
nodes as a CUDA build; the oracle then places them as a one-GPU load would.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
_FA = {"on": 1, "off": 0, "auto": 1}  # auto: a CUDA device with FA kernels turns it on


class _Tensor(ctypes.Structure):
    pass


_Tensor._fields_ = [  # struct ggml_tensor (ggml/include/ggml.h)
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * 4),
    ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * 16),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_Tensor) * 10),
    ("view_src", ctypes.POINTER(_Tensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


def _child() -> None:  # pragma: no cover - runs in the child process
    import llama_cpp
    import llama_cpp.llama_cpp as LL

    path, n_ctx, tk, tv, fa, n_ubatch = sys.argv[1:7]
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
    base.ggml_graph_n_nodes.restype = ctypes.c_int
    base.ggml_graph_n_nodes.argtypes = [ctypes.c_void_p]
    base.ggml_graph_node.restype = ctypes.POINTER(_Tensor)
    base.ggml_graph_node.argtypes = [ctypes.c_void_p, ctypes.c_int]
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    base.ggml_nbytes.restype = ctypes.c_size_t
    base.ggml_nbytes.argtypes = [ctypes.POINTER(_Tensor)]
    base.ggml_backend_buffer_name.restype = ctypes.c_char_p
    base.ggml_backend_buffer_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_buffer_get_usage.restype = ctypes.c_int
    base.ggml_backend_buffer_get_usage.argtypes = [ctypes.c_void_p]
    llama = ctypes.CDLL(os.path.join(libdir, "libllama.so"))
    reserve = (
        llama._Z19llama_graph_reserveP13llama_contextjjj
    )  # llama_graph_reserve(ctx, tokens, seqs, outputs)
    reserve.restype = ctypes.c_void_p
    reserve.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32]

    quiet = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *_: None)
    LL.llama_log_set(quiet, None)
    LL.llama_backend_init()
    mp = LL.llama_model_default_params()
    mp.no_alloc, mp.load_mode, mp.n_gpu_layers = True, LL.LLAMA_LOAD_MODE_NONE, 0
    model = LL.llama_model_load_from_file(path.encode(), mp)
    cp = LL.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = int(n_ctx), int(n_ubatch), int(n_ubatch)
    cp.type_k, cp.type_v, cp.flash_attn_type = _TYPES[tk], _TYPES[tv], _FA[fa]
    cp.swa_full, cp.n_threads, cp.n_threads_batch = False, 1, 1
    ctx = LL.llama_init_from_model(model, cp)
    tokens = min(int(n_ctx), int(n_ubatch))
    graph = reserve(ctx, tokens, 1, tokens)

    ids: dict[int, int] = {}
    out: list[dict[str, object]] = []

    def visit(p: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        addr = ctypes.addressof(p.contents)
        if addr in ids:
            return ids[addr]
        t = p.contents
        d: dict[str, object] = {
            "name": t.name.decode(),
            "op": base.ggml_op_name(t.op).decode(),
            "type": t.type,
            "ne": list(t.ne),
            "nb": list(t.nb),
            "nbytes": base.ggml_nbytes(p),
            "flags": t.flags,
            "buf": base.ggml_backend_buffer_name(t.buffer).decode() if t.buffer else None,
            "usage": base.ggml_backend_buffer_get_usage(t.buffer) if t.buffer else None,
            "view_offs": t.view_offs,
        }
        d["view_src"] = visit(t.view_src) if t.view_src else None
        srcs = [visit(t.src[j]) if t.src[j] else None for j in range(10)]
        while srcs and srcs[-1] is None:
            srcs.pop()
        d["src"] = srcs
        ids[addr] = len(out)
        out.append(d)
        return ids[addr]

    nodes = [visit(base.ggml_graph_node(graph, i)) for i in range(base.ggml_graph_n_nodes(graph))]
    json.dump({"tensors": out, "nodes": nodes}, sys.stdout)


if __name__ == "__main__":
    _child()
