"""ggml-backend's scheduler and ggml-alloc's graph allocator, replayed over a node list.

engine.plan.compute_replay builds the nodes of a transformer layer as llama.cpp's graph has
them; this module does what happens to them next, following ggml-backend.cpp
(`ggml_backend_sched_split_graph`, pass 5 and the graph copy) and ggml-alloc.c
(`ggml_gallocr_alloc_graph_impl`):

* splits: a new split starts where the backend changes, or where a GPU node reads a weight
  that stays on the host and the split already has inputs (so each op_offload weight copy
  gets its own split and the previous copy's memory can be reused);
* copies: the first use of a tensor from another backend adds it to the split's inputs and
  creates one copy per (tensor, backend) for the whole graph (later splits reuse it);
  every input copy is allocated at the start of its split, in the order of first use, after
  a dependency node that keeps the source alive until then;
* allocation: each node is allocated when reached (in place of a source where the op allows
  it and that source has no other consumer left, same size), and each tensor is freed after
  its last consumer. Views are not nodes here: a consumer of a view counts as a consumer of
  the viewed tensor, which is what the allocator's view counting amounts to.

Only the GPU buffer is sized (host-side tensors are not allocated in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.plan.ggml_alloc import DynAllocator

GPU, CPU = "gpu", "cpu"
# kinds of tensors that are not nodes: weights (on the GPU or left on the host), graph inputs
# (always on the host) and host tensors that are not weights (K/V cache views of CPU layers)
W_GPU, W_CPU, INPUT, HOST = "w_gpu", "w_cpu", "input", "host"


@dataclass
class _T:
    size: int
    kind: str  # "node" or one of W_GPU, W_CPU, INPUT, HOST
    backend: str = GPU
    srcs: list[int] = field(default_factory=list)
    inplace: bool = False


class Graph:
    """Nodes in graph order; ids are indices."""

    def __init__(self) -> None:
        self.t: list[_T] = []
        self.order: list[int] = []  # node ids in graph order

    def _add(self, t: _T) -> int:
        self.t.append(t)
        return len(self.t) - 1

    def leaf(self, size: int, kind: str) -> int:
        return self._add(_T(size, kind, CPU if kind in (W_CPU, INPUT, HOST) else GPU))

    def node(self, size: int, *srcs: int, inplace: bool = False, backend: str = GPU) -> int:
        i = self._add(_T(size, "node", backend, [s for s in srcs if s >= 0], inplace))
        self.order.append(i)
        return i


def gpu_buffer_size(g: Graph, alignment: int = 128) -> int:
    """ggml-alloc's size for the GPU compute buffer of the scheduled graph."""
    steps = _schedule(g)
    children: dict[int, int] = {}
    for _kind, _i, srcs in steps:
        for s in srcs:
            children[s] = children.get(s, 0) + 1
    alloc = DynAllocator(alignment)
    where: dict[int, tuple[int, int]] = {}  # allocated GPU tensors: offset, size
    sizes = {i: t.size for i, t in enumerate(g.t)}
    for kind, i, srcs in steps:
        if i >= 0 and _on_gpu(g, i, kind) and i not in where:
            reused = False
            if kind == "node" and g.t[i].inplace:
                for s in srcs:
                    if s in where and children.get(s, 0) == 1 and sizes.get(s) == g.t[i].size:
                        where[i] = where.pop(s)
                        reused = True
                        break
            if not reused:
                where[i] = (alloc.alloc(g.t[i].size if kind == "node" else sizes[i]), sizes[i])
        for s in srcs:
            children[s] -= 1
            if children[s] == 0 and s in where:
                offset, size = where.pop(s)
                alloc.free(offset, size)
    return alloc.max_size


def _on_gpu(g: Graph, i: int, kind: str) -> bool:
    return kind == "copy" or (kind == "node" and g.t[i].backend == GPU and g.t[i].size > 0)


def _schedule(g: Graph) -> list[tuple[str, int, list[int]]]:
    """[(kind, tensor id, sources)]: "dep" keeps its sources alive, "copy" allocates an input
    copy (its id is a new tensor of the source's size), "node" is a graph node."""
    splits: list[tuple[str, list[int], list[tuple[int, list[int]]]]] = []
    copies: dict[tuple[int, str], int] = {}
    cur = ""
    for i in g.order:
        t = g.t[i]
        be = t.backend
        new = be != cur or (be == GPU and bool(splits[-1][1]) and any(g.t[s].kind == W_CPU for s in t.srcs))
        if new:
            splits.append((be, [], []))
            cur = be
        inputs, nodes = splits[-1][1], splits[-1][2]
        srcs = []
        for s in t.srcs:
            src_be = g.t[s].backend if g.t[s].kind != W_GPU else GPU
            if src_be != be and g.t[s].kind != W_GPU:
                key = (s, be)
                if key not in copies:
                    copies[key] = g._add(_T(g.t[s].size, "copy", be))
                    inputs.append(s)
                srcs.append(copies[key])
            else:
                srcs.append(s)
        nodes.append((i, srcs))
    steps: list[tuple[str, int, list[int]]] = []
    for be, inputs, nodes in splits:
        for s in inputs:
            steps.append(("dep", -1, [s]))
            c = copies[(s, be)]
            steps.append(("copy" if be == GPU else "host", c, []))
        steps += [("node", i, srcs) for i, srcs in nodes]
    # copies made by a CPU split live in host memory; only their sources' lifetimes matter
    sizes_fix = {c: g.t[s].size for (s, _be), c in copies.items()}
    for c, size in sizes_fix.items():
        g.t[c].size = size
    return steps
