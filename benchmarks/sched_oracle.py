"""A GPU-free oracle for the CUDA0 compute buffer: llama.cpp's own graph through the scheduler.

tools/llama_graph_dump.py gives the reserve graph llama.cpp builds (every node and view, from
the CPU library); this module does to it what a one-GPU CUDA load does, in Python, following
the vendored source (llama.cpp 0c1e570):

* placement: layer il on the GPU when il >= n_layer + 1 - ngl, the output layer (index
  n_layer) too (src/llama-model.cpp, i_gpu_start); weights of CPU layers in CUDA_Host (a host
  buffer: make_cpu_buft_list), their KV cache in plain CPU memory; a tied output matrix is the
  output layer's own duplicate;
* ggml_backend_sched_split_graph (ggml/src/ggml-backend.cpp), passes 1-5: pre-allocated
  tensors stay with their buffer, graph inputs go to the CPU, an op on a host weight runs on the
  GPU when ggml-cuda offloads it (ggml_backend_cuda_device_offload_op: ≥ 32 rows; never ROPE
  or FLASH_ATTN_EXT), GPU backends expand down and up, then the rest; a split starts where the
  backend changes or a host weight is read after the split already has inputs; each foreign
  source gets one copy per backend, an input of the split that first needs it;
* ggml_backend_cuda_graph_optimize: the alloc deps of the fused top-k chain and of the fused
  weighted expert sum, appended as dependency nodes after their `until` node;
* the graph copy (a dependency on each input's source, then its copy, at the split start) and
  ggml_gallocr_alloc_graph_impl (ggml/src/ggml-alloc.c): children and views counted first,
  in-place reuse of an own, same-layout, last-use parent (never a view, never an output),
  frees when children and views reach zero, sizes from ggml-cuda's get_alloc_size (row
  padding of quantized tensors, FLASH_ATTN_EXT's f16 K/V), engine.plan.ggml_alloc's allocator.

It reproduces all 743 single-sequence H200 dry runs of benchmarks/results/gpu-memory-2026-12-04.json
exactly (full and partial offload, 5 shapes), so it can check engine.plan.compute_replay on
settings nobody measured. Assumes one CUDA GPU and ubatches of at least 32 tokens
with the MMA flash-attention kernel (f16 copies of a quantized K/V). The command line is
benchmarks/sched_oracle_check.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_compute import write_sparse_gguf  # noqa: E402
from engine.plan.ggml_alloc import DynAllocator  # noqa: E402

GPU, CPU = 0, 1
INPUT, OUTPUT = 1, 2  # GGML_TENSOR_FLAG_*
WEIGHTS = 1  # GGML_BACKEND_BUFFER_USAGE_WEIGHTS
VIEW_OPS = {"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}
INPLACE = {"FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV"}
INPLACE |= {"SQR", "SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK"}
INPLACE |= {"CLAMP", "SOFT_MAX", "SOFT_MAX_BACK"}  # ggml_op_can_inplace
QUANT = {2: (32, 18), 3: (32, 20), 8: (32, 34)}  # q4_0, q4_1, q8_0: elements, bytes per block
TOPK_CHAIN = [
    "SOFT_MAX",
    "RESHAPE",
    "ARGSORT",
    "VIEW",
    "GET_ROWS",
    "RESHAPE",
    "SUM_ROWS",
    "CLAMP",
    "DIV",
    "RESHAPE",
]


@dataclass
class T:
    name: str
    op: str
    type: int
    ne: list[int]
    nb: list[int]
    nbytes: int
    flags: int
    src: list[int | None]
    view_src: int | None
    loc: str | None = None  # pre-allocated: "gpu", "host" (CUDA_Host weights) or "cpu" (KV)
    backend: int = -1
    usage: int | None = None


@dataclass
class _State:
    children: dict[int, int] = field(default_factory=dict)
    views: dict[int, int] = field(default_factory=dict)
    at: dict[int, tuple[int, int]] = field(default_factory=dict)  # GPU tensors: offset, size


def load(d: dict[str, Any], n_layer: int, ngl: int, n_cpu_moe: int = 0) -> tuple[list[T], list[int]]:
    """The tensors placed as a one-GPU load places them; n_cpu_moe moves the routed experts of
    layers < n_cpu_moe to the CPU device's buffer type (`--n-cpu-moe`: a host buffer)."""
    ts = [
        T(
            x["name"],
            x["op"],
            x["type"],
            x["ne"],
            x["nb"],
            x["nbytes"],
            x["flags"],
            list(x["src"]),
            x["view_src"],
        )
        for x in d["tensors"]
    ]
    for t, x in zip(ts, d["tensors"]):
        t.usage = x["usage"]
    nodes: list[int] = d["nodes"]
    out_w = next((ts[n].src[0] for n in nodes if ts[n].name == "result_output"), None)
    start = max(n_layer + 1 - ngl, 0)
    for i, (t, x) in enumerate(zip(ts, d["tensors"])):
        if x["buf"] is None:
            continue
        if t.name.startswith("blk.") or t.name.startswith("cache_"):
            il = (
                int(t.name.split(".")[1])
                if t.name.startswith("blk.")
                else int(t.name.split("_l")[1].split(" ")[0])
            )
        else:  # token_embd is the input layer's; output, output_norm (and a tied duplicate) the output layer's
            il = n_layer if (i == out_w or not t.name.startswith("token_embd")) else -1
        gpu = 0 <= il and il >= start and not (il < n_cpu_moe and "_exps." in t.name)
        t.loc = "gpu" if gpu else ("host" if t.usage == WEIGHTS else "cpu")
    _per_layer_duplicates(ts, nodes, start)
    return ts, nodes


def _per_layer_duplicates(ts: list[T], nodes: list[int], start: int) -> None:
    """rope_freqs is created per layer (TENSOR_DUPLICATED, src/models/llama.cpp), one tensor per
    buffer context: the CPU-only dump has one, a split load one on the host and one on the GPU.
    Each layer's rope reads the one of its own layer's buffer."""
    for n in nodes:
        t = ts[n]
        if t.op != "ROPE" or len(t.src) < 3 or t.src[2] is None or not t.name.rsplit("-", 1)[-1].isdigit():
            continue
        f = ts[t.src[2]]
        loc = "gpu" if int(t.name.rsplit("-", 1)[-1]) >= start else "host"
        if f.loc not in (None, loc):
            twin = next((i for i, x in enumerate(ts) if x.name == f.name and x.loc == loc), None)
            if twin is None:
                ts.append(
                    T(f.name, f.op, f.type, f.ne, f.nb, f.nbytes, f.flags, [], None, loc, usage=f.usage)
                )
                twin = len(ts) - 1
            t.src[2] = twin


def _base(ts: list[T], t: T) -> T:
    return ts[t.view_src] if t.view_src is not None else t


def _supported(ts: list[T], t: T, b: int) -> bool:
    base = _base(ts, t)
    if base.loc is not None:
        return (base.loc == "gpu") == (b == GPU)
    be = t.backend if t.backend != -1 else base.backend
    return be == b


def _batch(t: T) -> int:
    if t.op == "GET_ROWS":
        return 0
    if t.op == "MUL_MAT":
        return t.ne[1]
    if t.op in ("MUL_MAT_ID", "ROPE", "ROPE_BACK"):
        return t.ne[2]
    return t.ne[1] * t.ne[2] * t.ne[3]


def _first_backend(ts: list[T], t: T) -> int:
    base = _base(ts, t)
    if base.loc is not None:
        return GPU if base.loc == "gpu" else CPU
    if t.flags & INPUT:
        return CPU
    if t.op not in ("ROPE", "FLASH_ATTN_EXT"):
        for s in t.src:
            w = ts[s] if s is not None else None
            if w is not None and w.loc is not None and w.usage == WEIGHTS:
                return GPU if w.loc == "gpu" or (w.loc == "host" and _batch(t) >= 32) else CPU
    return -1


def schedule(ts: list[T], nodes: list[int]) -> list[tuple[int, int, list[int]]]:
    """The graph copy: [(tensor id, backend, sources)]; dependency nodes are new tensors."""
    leafs = {s for n in nodes for s in ts[n].src if s is not None} - set(nodes)
    for i in sorted(leafs) + nodes:
        if ts[i].backend == -1:
            ts[i].backend = _first_backend(ts, ts[i])
    nv = [n for n in nodes if ts[n].op not in VIEW_OPS]
    for seq, gpu_only in ((nv, True), (nv[::-1], True), (nv, False), (nv[::-1], False)):
        cur = -1
        for n in seq:
            if ts[n].backend != -1:
                cur = -1 if gpu_only and ts[n].backend == CPU else ts[n].backend
            elif cur != -1:
                ts[n].backend = cur
    for n in nodes:
        t = ts[n]
        if t.view_src is not None and t.backend == -1:
            t.backend = ts[t.view_src].backend
        for s in t.src:
            if s is not None and ts[s].backend == -1:
                ts[s].backend = _base(ts, ts[s]).backend if ts[s].view_src is not None else t.backend
        if t.backend == -1:
            t.backend = GPU
    splits: list[tuple[int, list[int], int]] = []  # backend, inputs, first node index
    copies: dict[tuple[int, int], int] = {}
    srcs_of: dict[int, list[int | None]] = {}
    cur = -2
    for i, n in enumerate(nodes):
        t = ts[n]
        if t.op in VIEW_OPS:
            continue
        weight_split = bool(splits) and bool(splits[-1][1]) and t.backend == cur
        weight_split = weight_split and any(
            s is not None
            and ts[s].loc is not None
            and ts[s].usage == WEIGHTS
            and not _supported(ts, ts[s], cur)
            for s in t.src
        )
        if t.backend != cur or weight_split:
            splits.append((t.backend, [], i if splits else 0))
            cur = t.backend
        new = list(t.src)
        for j, s in enumerate(t.src):
            if s is None or ts[s].backend == cur or _supported(ts, ts[s], cur):
                continue
            if (s, cur) not in copies:
                st = ts[s]
                ts.append(
                    T("copy#" + st.name, "NONE", st.type, st.ne, st.nb, st.nbytes, 0, [], None, backend=cur)
                )
                copies[(s, cur)] = len(ts) - 1
                splits[-1][1].append(s)
            new[j] = copies[(s, cur)]
        srcs_of[n] = new
    deps = _fusion_deps(ts, nodes, splits, srcs_of)
    out: list[tuple[int, int, list[int]]] = []
    for k, (be, inputs, start) in enumerate(splits):
        end = splits[k + 1][2] if k + 1 < len(splits) else len(nodes)
        for s in inputs:
            out.append((_dep(ts, [s], ts[s].backend), ts[s].backend, [s]))
            out.append((copies[(s, be)], be, []))
        for n in nodes[start:end]:
            out.append((n, ts[n].backend, [s for s in srcs_of.get(n, ts[n].src) if s is not None]))
            keep = deps.get(n, [])
            for j in range(0, len(keep), 10):  # GGML_MAX_SRC per dependency node
                out.append((_dep(ts, keep[j : j + 10], be), be, keep[j : j + 10]))
    return out


def _dep(ts: list[T], srcs: list[int], backend: int) -> int:
    """A GGML_OP_NONE view that only keeps its sources alive (never allocated, never a view)."""
    ts.append(T("dep", "DEP", 0, [0] * 4, [0] * 4, 0, 0, list(srcs), None, backend=backend))
    return len(ts) - 1


def _fusion_deps(
    ts: list[T],
    nodes: list[int],
    splits: list[tuple[int, list[int], int]],
    srcs_of: dict[int, list[int | None]],
) -> dict[int, list[int]]:
    """ggml_backend_cuda_graph_optimize's add_alloc_dep calls, per GPU split: {until: kept}."""
    deps: dict[int, list[int]] = {}

    def keep(until: int, *tensors: int | None) -> None:
        k = deps.setdefault(until, [])
        k += [x for x in tensors if x is not None and x not in k]

    for k, (be, _inputs, start) in enumerate(splits):
        end = splits[k + 1][2] if k + 1 < len(splits) else len(nodes)
        sn = nodes[start:end] if be == GPU else []
        i = 0
        while i < len(sn):
            t = ts[sn[i]]
            used = t.ne[1]
            if t.op == "MUL" and t.type == 0 and 2 <= used <= 15 and i + 2 * used <= len(sn):
                ops = [ts[x].op for x in sn[i + 1 : i + 2 * used]]
                s = srcs_of[sn[i]]
                if ops == ["VIEW"] * used + ["ADD"] * (used - 1) and s[1] is not None and ts[s[1]].ne[0] == 1:
                    keep(sn[i + 2 * used - 1], s[0], s[1])  # experts and weights until the last add
                    i += 2 * used - 1
            if [ts[x].op for x in sn[i : i + len(TOPK_CHAIN)]] == TOPK_CHAIN and i + len(TOPK_CHAIN) < len(
                sn
            ):
                n_expert = ts[sn[i]].ne[0]
                if (n_expert & (n_expert - 1) == 0 and n_expert <= 512) or n_expert in (288, 576):
                    for x in sn[i : i + len(TOPK_CHAIN)]:
                        keep(sn[i + len(TOPK_CHAIN)], x, *srcs_of.get(x, ts[x].src))
                    i += len(TOPK_CHAIN) - 1
            i += 1
    return deps


def _alloc_size(ts: list[T], t: T) -> int:
    """ggml_backend_cuda_buffer_type_get_alloc_size."""
    size = t.nbytes
    if t.op == "FLASH_ATTN_EXT":  # ggml_cuda_flash_attn_ext_get_f16_extra_data (MMA kernel)
        for s in (t.src[1], t.src[2]):
            kv = ts[s] if s is not None else None
            if kv is not None and kv.type != 1:
                size = -(-size // 128) * 128 + 2 * kv.ne[0] * kv.ne[1] * kv.ne[2] * kv.ne[3]
    if t.type in QUANT and t.ne[0] % 512:
        blk, nbytes = QUANT[t.type]
        size += (512 - t.ne[0] % 512) // blk * nbytes
    return size


def gpu_buffer(ts: list[T], graph: list[tuple[int, int, list[int]]]) -> int:
    """ggml_gallocr_alloc_graph_impl over the graph copy, for the GPU buffer only."""
    alloc, st = DynAllocator(128), _State()
    for i, _be, srcs in graph:
        t = ts[i]
        if t.view_src is not None and t.op != "NONE":
            st.views[t.view_src] = st.views.get(t.view_src, 0) + 1
        for s in srcs:
            st.children[s] = st.children.get(s, 0) + 1
    for i, be, srcs in graph:
        t = ts[i]
        if be == GPU and t.op not in ("DEP",) and t.view_src is None and t.loc is None and i not in st.at:
            st.at[i] = _place(ts, st, alloc, i, srcs)
        for s in srcs:
            st.children[s] -= 1
            if st.children[s] or st.views.get(s, 0):
                continue
            vs = ts[s].view_src
            if vs is not None:
                st.views[vs] -= 1
                if not st.views[vs] and not st.children.get(vs, 0) and vs in st.at:
                    _free(ts, st, alloc, vs)
            elif s in st.at:
                _free(ts, st, alloc, s)
    return alloc.max_size


def _place(ts: list[T], st: _State, alloc: DynAllocator, i: int, srcs: list[int]) -> tuple[int, int]:
    t = ts[i]
    size = _alloc_size(ts, t)
    if t.op in INPLACE:
        for p in srcs:
            pt = ts[p]
            if p not in st.at or pt.flags & OUTPUT or (pt.ne, pt.nb, pt.type) != (t.ne, t.nb, t.type):
                continue
            if st.children.get(p) == 1 and not st.views.get(p, 0):
                offset, psize = st.at.pop(p)
                if alloc._pad(psize) > alloc._pad(size):  # ggml_gallocr_free_extra_space
                    alloc.free(offset + alloc._pad(size), alloc._pad(psize) - alloc._pad(size))
                return offset, size
    return alloc.alloc(size), size


def _free(ts: list[T], st: _State, alloc: DynAllocator, i: int) -> None:
    if not ts[i].flags & OUTPUT:  # graph outputs are never freed
        offset, size = st.at.pop(i)
        alloc.free(offset, size)


def oracle(graph_json: dict[str, Any], n_layer: int, ngl: int, n_cpu_moe: int = 0) -> int:
    ts, nodes = load(graph_json, n_layer, ngl, n_cpu_moe)
    return gpu_buffer(ts, schedule(ts, nodes))


def dump(shape: str, n_ctx: int, tk: str, tv: str, fa: str, ub: int, cache: Path) -> dict[str, Any]:
    p = cache / f"{shape}_{n_ctx}_{tk}_{tv}_{fa}_{ub}.json"
    if not p.exists():
        model = cache / f"{shape}.gguf"
        if not model.exists():
            write_sparse_gguf(model, shape)
        args = [str(model), str(n_ctx), tk, tv, fa, str(ub)]
        res = subprocess.run(
            [sys.executable, "-m", "tools.llama_graph_dump", *args], cwd=ROOT, capture_output=True, text=True
        )
        p.write_text(res.stdout)
    return dict(json.loads(p.read_text()))
