"""The GPU compute buffer with layers on the CPU, by replaying ggml-alloc over the split graph.

With op_offload (llama.cpp's default) a matmul on a host weight with a full ubatch runs on the
GPU: `ggml_backend_sched_split_graph` (ggml-backend.cpp) starts a split at each such op and
adds a copy of the weight to the GPU side as the split's input; the flash-attention (or KQ)
op of a CPU layer follows onto the GPU with copies of the layer's K and V cache views (cache
type, every cell); the KQ mask(s) are copied once and stay until the last layer; with the
output layer on the CPU the output matrix is copied too. The copies are graph nodes placed at
the start of their split and freed after their last consumer, like every activation, so the
buffer size is ggml-alloc's high-water mark over that node order: a K copy that fits no hole
left by the weight copies goes past the end. No closed form follows those holes, so this
module replays the allocator (`engine.plan.ggml_alloc`, a port of `ggml_dyn_tallocr`) over the
tensors of the graph llama.cpp builds for a standard transformer layer (norm, Q/K/V with
optional Q/K norms, attention, output, optional post-norms, a gated dense or routed-expert
FFN), in the order the scheduler adds them. Tensors of a few KiB (norm weights, router
scalars) are left out.

The replay is not the graph itself. On the 745 H200 dry runs (and 8 real loads) with and
without layers on the CPU (benchmarks/results/gpu-memory-2026-12-04.json: 5 shapes,
f16/q8_0/q4_0 K/V, flash attention on and off, 4k-128k, ubatch 512-2048) the replay alone is
within 1 MiB in about a fifth of the cases with layers on the CPU, its median error is 0 to
+17 MiB for the dense shapes (-41 MiB for the routed-expert one), and its tails reach -256 /
+198 MiB: where one large block (a weight or K copy, an FFN activation) lands past the end
differs from llama.cpp, and the MoE graph's fused-op allocation dependencies are not followed.
`SAFETY` therefore adds the largest such block; engine.plan.compute_placement takes the
smaller of this and the live-tensor bound of engine.plan.compute_cuda. Exact figures need
the graph node for node (views, in-place reuse, every small tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.plan.ggml_alloc import DynAllocator

#: Families whose graphs the replay follows (checked on the grid above); others keep the
#: stated bound of engine.plan.compute_cuda.
REPLAY_ARCHS = frozenset({"llama", "qwen3", "qwen3moe", "gemma3"})
#: The stated safety term: the largest single tensor of a CPU layer (weight copy, K or V copy
#: with half its f16 conversion, FFN activation), four hidden rows per token, four
#: used-expert FFN rows (routed experts), and six more hidden rows with no repeating layer
#: on the GPU (n_gpu_layers 0 or 1).
SAFETY = "the largest tensor of a CPU layer + 4 hidden rows (+4 expert rows; +6 rows at n_gpu_layers ≤ 1)"


@dataclass(frozen=True)
class LayerWeights:
    """CUDA bytes of one layer's matrices (0 where absent)."""

    q: int
    k: int
    v: int
    o: int
    gate: int
    up: int
    down: int
    router: int = 0


@dataclass(frozen=True)
class LayerCache:
    """What one layer's attention puts in the GPU buffer when its K/V live on the host."""

    k: int  # K copy: cells × n_embd_k_gqa in the cache type
    v: int
    f16: int  # flash attention on a quantized cache: the f16 K and V appended to its output
    kq: int  # without flash attention: the f32 KQ scores
    mask: str  # "full" or "swa": which KQ mask it reads
    rk: int  # bytes of Kcur (and Vcur) for the ubatch: 4 × tokens × n_embd_k_gqa
    rf: int  # one FFN activation: 4 × tokens × n_ff (routed: × used experts)


@dataclass(frozen=True)
class ReplayGraph:
    tokens: int
    n_embd: int
    rq: int  # one query/attention-output row block: 4 × tokens × n_head × head_k
    out_rows: int  # 4 × outputs × n_embd
    logits: int
    output_matrix: int
    masks: dict[str, int]
    flash_attn: bool
    rotate: tuple[bool, bool]  # Hadamard rotation of Q/K (quantized K) and of V/output (quantized V)
    qk_norm: bool
    post_norm: bool
    experts: tuple[int, int] | None  # (n_expert, used) for routed FFNs
    weights: Sequence[LayerWeights]
    caches: Sequence[LayerCache]


class _Live:
    def __init__(self) -> None:
        self.alloc = DynAllocator()
        self.live: dict[int, tuple[int, int]] = {}
        self.n = 0

    def new(self, size: int) -> int:
        self.n += 1
        self.live[self.n] = (self.alloc.alloc(size), size)
        return self.n

    def copy(self, on_cpu: bool, size: int) -> int:
        """A weight copy for an op_offload split (none for a GPU layer)."""
        return self.new(size) if on_cpu and size else 0

    def free(self, *ids: int) -> None:
        for i in ids:
            if i in self.live:
                offset, size = self.live.pop(i)
                self.alloc.free(offset, size)


def replay(g: ReplayGraph, cpu_layers: frozenset[int], output_on_cpu: bool) -> int:
    """ggml-alloc's size for the GPU buffer of one GPU holding every layer not in cpu_layers."""
    s = _Live()
    e4 = 4 * g.tokens * g.n_embd
    inp = s.new(e4)  # the embeddings' GPU copy (token_embd stays on the host)
    masks: dict[str, int] = {}
    last = len(g.caches) - 1
    for il, (w, c) in enumerate(zip(g.weights, g.caches, strict=True)):
        cpu = il in cpu_layers
        norm = s.new(e4)
        t = s.copy(cpu, w.q)
        q = s.new(g.rq)
        s.free(t)
        if g.qk_norm:
            q2 = s.new(g.rq)
            s.free(q)
            q = q2
        t = s.copy(cpu, w.v)
        vcur = s.new(c.rk)
        s.free(t)
        t = s.copy(cpu, w.k)
        kcur = s.new(c.rk)
        s.free(t)
        if g.qk_norm:
            k2 = s.new(c.rk)
            s.free(kcur)
            kcur = k2
        if g.rotate[0]:  # llama-graph build_attn: q and k times the Hadamard matrix
            q2 = s.new(g.rq)
            s.free(q)
            k2 = s.new(c.rk)
            s.free(kcur)
            q, kcur = q2, k2
        if g.rotate[1]:
            v2 = s.new(c.rk)
            s.free(vcur)
            vcur = v2
        s.free(norm, kcur, vcur)  # K and V rows go to the cache (set_rows)
        kc = s.copy(cpu, c.k)
        vc = s.copy(cpu, c.v)
        if c.mask not in masks:
            masks[c.mask] = s.new(g.masks[c.mask])
        if g.flash_attn:
            out = s.new(g.rq + c.f16)
            s.free(q, kc, vc)
        else:
            kq = s.new(c.kq)
            s.free(q, kc)
            kqv = s.new(g.rq)
            s.free(kq, vc)
            out = s.new(g.rq)  # the permuted result made contiguous
            s.free(kqv)
        if il == last:  # the KQ masks' last reader
            s.free(*masks.values())
        if g.rotate[1]:  # the attention output is rotated back
            o2 = s.new(g.rq)
            s.free(out)
            out = o2
        t = s.copy(cpu, w.o)
        att = s.new(e4)
        s.free(t, out)
        if g.post_norm:
            p = s.new(e4)
            s.free(att)
            att = p
        if il == last:  # only the output rows go on (inp_out_ids): two get_rows, then the add
            rows = s.new(g.out_rows)
            s.free(att)
            res = s.new(g.out_rows)
            s.free(inp, res)  # the add happens in place of the first
            att = rows
        else:
            s.free(inp)  # the residual add happens in place of the attention output
        inp = _ffn(s, g, w, c, cpu, att)
    t = s.copy(output_on_cpu, g.output_matrix)
    s.new(g.logits)
    s.free(t)
    return s.alloc.max_size


def _ffn(s: _Live, g: ReplayGraph, w: LayerWeights, c: LayerCache, cpu: bool, ffn_inp: int) -> int:
    e4 = 4 * g.tokens * g.n_embd
    norm = s.new(e4)
    extra: tuple[int, ...] = ()
    if g.experts:
        n_expert, used = g.experts
        t = s.copy(cpu, w.router)
        logits = s.new(4 * g.tokens * n_expert)
        s.free(t)
        order = s.new(4 * g.tokens * n_expert)
        weights = s.new(4 * g.tokens * used)
        s.free(order)
        extra = (logits, weights)
    t = s.copy(cpu, w.gate)
    gate = s.new(c.rf)
    s.free(t)
    t = s.copy(cpu, w.up)
    up = s.new(c.rf)
    s.free(t, norm)
    act = s.new(c.rf)
    s.free(gate, up)
    t = s.copy(cpu, w.down)
    down = s.new(e4 * (g.experts[1] if g.experts else 1))
    s.free(t, act)
    if g.experts:  # the weighted experts are summed into one hidden row
        total = s.new(e4)
        s.free(down, *extra)
        down = total
    if g.post_norm:
        p = s.new(e4)
        s.free(down)
        down = p
    s.free(ffn_inp)
    return down


def safety(g: ReplayGraph, cpu_layers: frozenset[int], gpu_repeating_layers: int) -> int:
    """The stated term (`SAFETY`) added to the replay: the largest single tensor of a CPU
    layer (a weight copy, a K or V copy with its f16 conversion, an FFN activation), since
    the replay and llama.cpp part where one such block lands past the end, plus rows."""
    if not cpu_layers and gpu_repeating_layers > 1:
        return 0
    e4 = 4 * g.tokens * g.n_embd
    block = 0
    for il in cpu_layers:
        w, c = g.weights[il], g.caches[il]
        block = max(block, w.q, w.o, w.gate, w.up, w.down, c.k + c.f16 // 2, c.v + c.f16 // 2, c.rf)
    b = block + 4 * e4
    if g.experts:
        b += 4 * max(c.rf for c in g.caches)
    if gpu_repeating_layers <= 1:
        b += 6 * e4
    return b
