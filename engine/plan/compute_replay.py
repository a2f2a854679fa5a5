"""The GPU compute buffer with layers on the CPU, by replaying ggml-alloc over the split graph.

With op_offload (llama.cpp's default) a matmul on a host weight with a full ubatch runs on the
GPU: `ggml_backend_sched_split_graph` (ggml-backend.cpp) starts a split at each such op and
adds a copy of the weight to the GPU side as the split's input; the flash-attention (or KQ)
op of a CPU layer follows onto the GPU with copies of the layer's K and V cache views (cache
type, every cell); the KQ mask(s) are copied once and stay until the last layer; with the
output layer on the CPU the output matrix is copied too. The copies are graph nodes placed at
the start of their split and freed after their last consumer, like every activation, so the
buffer size is ggml-alloc's high-water mark over that node order: a K copy that fits no hole
left by the weight copies goes past the end, and a copy of a few KiB (token positions,
K/V row indices, output ids) that stays to the end pins where the free space begins. No closed
form follows those holes, so this module builds the nodes of the graph llama.cpp builds for a
standard transformer layer (norm, Q/K/V with optional Q/K norms and the Hadamard rotations of
a quantized cache, attention, output, optional post-norms, a gated dense or routed-expert
FFN) with the graph inputs, and engine.plan.sched_replay splits, copies and allocates them as
the scheduler and ggml-alloc do.

For llama and qwen3 layers (`EXACT_ARCHS`, standard tensors only) the nodes are the graph's
own: re-evaluated offline on the 367 H200 dry runs and real loads of the llama3-8b, qwen3-32b
and llama3-70b shapes with layers on the CPU (benchmarks/results/gpu-memory-2026-12-04.json,
benchmarks/offload_replay_eval.py: f16/q8_0/q4_0 K/V, flash attention on and off, 4k-128k,
ubatch 512-2048, ngl 0..n) every one is within 0.01 MiB, so the plan uses the replay as is.
What made it exact: ggml-alloc never reuses a view's memory in place (a view is not "own":
ggml-alloc.c, ggml_gallocr_allocate_node), so the rope (or the Q/K norm) after the reshape of a
projection to heads gets a block of its own. For gemma3 and routed experts the replay still
differs (sandwich norms and the tied output; ggml-cuda's fused top-k and weighted-sum alloc
deps): there `SAFETY` adds the largest block, and engine.plan.compute_placement takes the
smaller of this and the live-tensor bound of engine.plan.compute_cuda.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.plan.sched_replay import CPU, GPU, HOST, INPUT, W_CPU, W_GPU, Graph, gpu_buffer_size

#: Families whose graphs the replay follows (checked on the grid above); others keep the
#: stated bound of engine.plan.compute_cuda.
REPLAY_ARCHS = frozenset({"llama", "qwen3", "qwen3moe", "gemma3"})
#: Families whose standard layers (engine.plan.compute_placement: no biases, no routed experts)
#: the replay builds node for node as llama.cpp's graph has them: there the replay is the
#: buffer, with no safety term (every recorded dry run of the llama and qwen3 shapes exact).
EXACT_ARCHS = frozenset({"llama", "qwen3"})
#: ggml-cuda moves an op on a host weight to the GPU from this many rows (ggml-cuda.cu,
#: GGML_OP_OFFLOAD_MIN_BATCH's default); below it the op stays on the CPU, as the replay does not.
OP_OFFLOAD_MIN_BATCH = 32
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
    head_dim: int
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
    exact: bool = False  # EXACT_ARCHS with standard layers: no safety term


def replay(g: ReplayGraph, cpu_layers: frozenset[int], output_on_cpu: bool) -> int:
    """ggml-alloc's size for the GPU buffer of one GPU holding every layer not in cpu_layers."""
    b = Graph()
    t, e4 = g.tokens, 4 * g.tokens * g.n_embd
    inp_tokens, pos, out_ids = b.leaf(4 * t, INPUT), b.leaf(4 * t, INPUT), b.leaf(4 * t, INPUT)
    masks = {k: b.leaf(v, INPUT) for k, v in g.masks.items()}
    # K/V row indices (i64); without flash attention V is stored transposed: one per element
    v_rows = 8 * t * (1 if g.flash_attn else max(c.rk for c in g.caches) // (4 * t))
    idxs = {k: (b.leaf(8 * t, INPUT), b.leaf(v_rows, INPUT)) for k in g.masks}
    rot = (b.leaf(4 * 128 * 128, INPUT), b.leaf(4 * 128 * 128, INPUT))
    x = b.node(e4, b.leaf(0, W_CPU), inp_tokens, backend=CPU)  # token_embd stays on the host
    last = len(g.caches) - 1
    for il, (w, c) in enumerate(zip(g.weights, g.caches, strict=True)):
        kind = W_CPU if il in cpu_layers else W_GPU
        x = _layer(b, g, w, c, kind, x, pos, masks[c.mask], idxs[c.mask], rot, out_ids if il == last else -1)
    kind = W_CPU if output_on_cpu else W_GPU
    x = _norm(b, e4, x, 4 * g.n_embd, kind)  # output norm
    b.node(g.logits, b.leaf(g.output_matrix, kind), x)
    return gpu_buffer_size(b)


def _layer(
    b: Graph,
    g: ReplayGraph,
    w: LayerWeights,
    c: LayerCache,
    kind: str,
    x: int,
    pos: int,
    mask: int,
    idxs: tuple[int, int],
    rot: tuple[int, int],
    out_ids: int,
) -> int:
    """One layer as llama.cpp's llama/qwen3/qwen3moe/gemma3 graphs build it (GPU-side sizes)."""
    e4 = 4 * g.tokens * g.n_embd
    on_cpu = kind == W_CPU
    norm = _norm(b, e4, x, 4 * g.n_embd, kind)
    q = _query_or_key(b, g, g.rq, w.q, kind, norm, pos, rot[0])
    v = b.node(c.rk, b.leaf(w.v, kind), norm)
    if g.rotate[1]:
        v = b.node(c.rk, rot[1], v)
    k = _query_or_key(b, g, c.rk, w.k, kind, norm, pos, rot[0])
    cache_k, cache_v = (b.leaf(c.k, HOST), b.leaf(c.v, HOST)) if on_cpu else (-1, -1)
    store = CPU if on_cpu else GPU
    b.node(0, k, idxs[0], *([cache_k] if on_cpu else []), backend=store)  # set_rows: a view
    b.node(0, v, idxs[1], *([cache_v] if on_cpu else []), backend=store)
    if g.flash_attn:
        out = b.node(g.rq + c.f16, q, cache_k, cache_v, mask)
    else:
        kq = b.node(c.kq, cache_k, q)
        kq = b.node(c.kq, kq, mask, inplace=True)  # soft_max
        kqv = b.node(g.rq, cache_v, kq)
        out = b.node(g.rq, kqv)  # the permuted result made contiguous
    if g.rotate[1]:
        out = b.node(g.rq, rot[1], out)
    att = b.node(e4, b.leaf(w.o, kind), out)
    if g.post_norm:
        att = _norm(b, e4, att, 4 * g.n_embd, kind)
    if out_ids >= 0:  # the last layer goes on with the output rows only
        att = b.node(g.out_rows, att, out_ids)
        x = b.node(g.out_rows, x, out_ids)
    ffn_inp = b.node(g.out_rows if out_ids >= 0 else e4, att, x, inplace=True)
    rows = g.out_rows if out_ids >= 0 else e4
    h = _norm(b, rows, ffn_inp, 4 * g.n_embd, kind)
    scale = rows // e4 if out_ids >= 0 else 1
    if g.experts:
        h = _experts(b, g, w, c, kind, h, scale)
    else:
        gate = b.node(c.rf * scale, b.leaf(w.gate, kind), h)
        up = b.node(c.rf * scale, b.leaf(w.up, kind), h)
        act = b.node(c.rf * scale, gate, up)
        h = b.node(rows, b.leaf(w.down, kind), act)
    if g.post_norm:
        h = _norm(b, rows, h, 4 * g.n_embd, kind)
    return b.node(rows, h, ffn_inp, inplace=True)


def _norm(b: Graph, rows: int, x: int, weight: int, kind: str) -> int:
    """rms_norm, then the multiply by the norm's weight (``weight`` bytes), both in place."""
    x = b.node(rows, x, inplace=True)
    return b.node(rows, x, b.leaf(weight, kind), inplace=True)


def _query_or_key(
    b: Graph, g: ReplayGraph, rows: int, weight: int, kind: str, x: int, pos: int, rot: int
) -> int:
    """Q or K: the projection, its norm where the family has one, rope, and the Hadamard
    rotation of a quantized K cache (llama.cpp applies the K rotation to Q as well)."""
    y = b.node(rows, b.leaf(weight, kind), x)
    # the projection is reshaped to heads first, and ggml-alloc never reuses a view's memory
    # in place (a view is not "own": ggml-alloc.c, ggml_gallocr_allocate_node), so the op
    # after the reshape (the Q/K norm, else rope) gets a new block
    if g.qk_norm:
        y = b.node(rows, y)  # rms_norm of the reshaped projection
        y = b.node(rows, y, b.leaf(4 * g.head_dim, kind), inplace=True)
    y = b.node(rows, y, pos, inplace=g.qk_norm)  # rope
    return b.node(rows, rot, y) if g.rotate[0] else y


def _experts(b: Graph, g: ReplayGraph, w: LayerWeights, c: LayerCache, kind: str, h: int, scale: int) -> int:
    """qwen3moe's routed FFN: router logits, softmax, top-k (argsort, get_rows, normalised
    weights), gate/up/down over the used experts, weighted and summed into one row."""
    assert g.experts is not None
    n_expert, used = g.experts
    t = g.tokens * scale
    logits = b.node(4 * t * n_expert, b.leaf(w.router, kind), h)
    probs = b.node(4 * t * n_expert, logits, inplace=True)
    order = b.node(4 * t * n_expert, probs)
    weights = b.node(4 * t * used, probs, order)
    total = b.node(4 * t, weights)
    total = b.node(4 * t, total, inplace=True)
    # ggml-cuda's top-k fusion keeps the router chain alive until its last node (alloc deps)
    weights = b.node(4 * t * used, weights, total, logits, order, inplace=True)
    gate = b.node(c.rf * scale, b.leaf(w.gate, kind), h, order)
    up = b.node(c.rf * scale, b.leaf(w.up, kind), h, order)
    act = b.node(c.rf * scale, gate, up)
    down = b.node(4 * t * used * g.n_embd, b.leaf(w.down, kind), act, order)
    down = b.node(4 * t * used * g.n_embd, down, weights, inplace=True)
    out = b.node(4 * t * g.n_embd, down)  # the first add of two expert views
    for _ in range(used - 3):
        out = b.node(4 * t * g.n_embd, out, down, inplace=True)
    # the weighted-sum fusion keeps the experts and their weights until the last add
    return b.node(4 * t * g.n_embd, out, down, weights, inplace=True)


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
