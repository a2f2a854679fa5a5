"""The GPU compute buffer of a one-GPU CUDA load, by replaying ggml-alloc over the split graph.

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

For layers made only of the tensors these graphs have (engine.plan.compute_placement:
no biases, no shared experts; `EXACT_ARCHS`) the nodes are the graph's own, and re-evaluated
offline on all 753 H200 dry runs and real loads (benchmarks/results/gpu-memory-2026-12-04.json,
benchmarks/offload_replay_eval.py: llama3-8b, qwen3-32b, llama3-70b, qwen3moe-30b-a3b,
gemma3-27b; f16/q8_0/q4_0 K/V, flash attention on and off, 4k-128k, ubatch 512-2048, ngl 0..n
and full offload, 1 or 4 sequences) the replay is within 0.01 MiB of every one, and it equals
benchmarks/sched_oracle.py (llama.cpp's own graph through the scheduler) on 300 unmeasured
settings, so the plan uses it as is, with or without layers on the CPU. What it took:

* ggml-alloc never reuses a view's memory in place (a view is not "own": ggml-alloc.c,
  ggml_gallocr_allocate_node), so the rope (or Q/K norm) after the reshape of a projection to
  heads, the division of the reshaped expert weights and the first add of two expert views
  each get a block of their own;
* build_attn expands Q, V, K; its iSWA variant (gemma3) Q, K, V (llama-graph.cpp), and gemma3
  takes the output rows before its post-attention norm;
* the K rotation of a quantized cache is the largest power of two from 64 dividing the head
  size, V's is 64 × 64, one pair per cache (llama-kv-cache.cpp, build_input_k_rot/_v_rot);
* a quantized K/V copy is a per-head view, padded by ggml-cuda to 512-element rows
  (ggml_backend_cuda_buffer_type_get_alloc_size);
* ggml-cuda's graph_optimize keeps the fused top-k chain and its sources until the node after
  it, and the expert outputs and their weights until the weighted sum's last add
  (ggml_backend_cuda_graph_optimize: add_alloc_dep; the scheduler appends a dependency node);
* Llama 3.1+ files' rope_freqs.weight is rope's third source: one tensor per buffer, so the CPU
  layers share one host copy and each of their ropes starts a split (unmeasured on a GPU; the
  plan equals benchmarks/sched_oracle.py there).

Routed experts alone on the host (`--n-cpu-moe`) are replayed the same way (copies of the
expert tensors for each offloaded MUL_MAT_ID); no GPU run measured that, but the plan equals
benchmarks/sched_oracle.py there too. Elsewhere (a layer with other tensors, a ubatch under
`OP_OFFLOAD_MIN_BATCH`) `SAFETY` adds the largest block, and engine.plan.compute_placement takes
the smaller of this and the live-tensor bound of engine.plan.compute_cuda.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.plan.sched_replay import CPU, GPU, HOST, INPUT, W_CPU, W_GPU, Graph, gpu_buffer_size

#: Families whose graphs the replay follows (checked on the grid above); others keep the
#: stated bound of engine.plan.compute_cuda.
REPLAY_ARCHS = frozenset({"llama", "qwen3", "qwen3moe", "gemma3"})
#: Families whose standard layers (engine.plan.compute_placement: no biases, no other tensors)
#: the replay builds node for node as llama.cpp's graph has them: there the replay is the
#: buffer, with no safety term (every recorded H200 dry run of their shapes exact).
EXACT_ARCHS = frozenset({"llama", "qwen3", "gemma3", "qwen3moe"})
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
    iswa: bool = False  # two caches (sliding-window and full): build_attn's iSWA variant
    rope_freqs: int = 0  # bytes of rope_freqs.weight (llama3 rope factors), 0 without one


def replay(
    g: ReplayGraph, cpu_layers: frozenset[int], output_on_cpu: bool, cpu_experts: frozenset[int] = frozenset()
) -> int:
    """ggml-alloc's size for the GPU buffer of one GPU holding every layer not in cpu_layers;
    cpu_experts: layers whose routed experts alone stay on the host (`--n-cpu-moe`: a host
    buffer, so their MUL_MAT_IDs are offloaded with copies of the expert tensors like a CPU
    layer's)."""
    b = Graph()
    t, e4 = g.tokens, 4 * g.tokens * g.n_embd
    inp_tokens, pos, out_ids = b.leaf(4 * t, INPUT), b.leaf(4 * t, INPUT), b.leaf(4 * t, INPUT)
    masks = {k: b.leaf(v, INPUT) for k, v in g.masks.items()}
    # K/V row indices (i64); without flash attention V is stored transposed: one per element
    v_rows = 8 * t * (1 if g.flash_attn else max(c.rk for c in g.caches) // (4 * t))
    idxs = {k: (b.leaf(8 * t, INPUT), b.leaf(v_rows, INPUT)) for k in g.masks}
    # the Hadamard rotations of a quantized cache, one pair per cache (an iSWA model has two):
    # K's is the largest power of two from 64 that divides the head size, V's always 64 × 64
    # (llama-kv-cache.cpp, build_input_k_rot / build_input_v_rot)
    nrot = 64
    while g.head_dim % (2 * nrot) == 0:
        nrot *= 2
    rots = {k: (b.leaf(4 * nrot * nrot, INPUT), b.leaf(4 * 64 * 64, INPUT)) for k in g.masks}
    # rope's sources: positions, and the llama3 rope factors where the file has them; those are
    # created per layer but once per buffer (TENSOR_DUPLICATED, llama-model-loader.cpp
    # create_tensor), so the CPU layers share one host tensor: one copy, kept to the last of them
    rope = {k: (pos, b.leaf(g.rope_freqs, k)) if g.rope_freqs else (pos,) for k in (W_CPU, W_GPU)}
    x = b.node(e4, b.leaf(0, W_CPU), inp_tokens, backend=CPU)  # token_embd stays on the host
    last = len(g.caches) - 1
    for il, (w, c) in enumerate(zip(g.weights, g.caches, strict=True)):
        kind = W_CPU if il in cpu_layers else W_GPU
        kinds = (kind, W_CPU if il in cpu_experts else kind)
        x = _layer(
            b,
            g,
            w,
            c,
            kinds,
            x,
            rope[kind],
            masks[c.mask],
            idxs[c.mask],
            rots[c.mask],
            out_ids if il == last else -1,
        )
    kind = W_CPU if output_on_cpu else W_GPU
    x = _norm(b, e4, x, 4 * g.n_embd, kind)  # output norm
    b.node(g.logits, b.leaf(g.output_matrix, kind), x)
    return gpu_buffer_size(b)


def _layer(
    b: Graph,
    g: ReplayGraph,
    w: LayerWeights,
    c: LayerCache,
    kinds: tuple[str, str],
    x: int,
    rope: tuple[int, ...],
    mask: int,
    idxs: tuple[int, int],
    rot: tuple[int, int],
    out_ids: int,
) -> int:
    """One layer as llama.cpp's llama/qwen3/qwen3moe/gemma3 graphs build it (GPU-side sizes);
    kinds: where the layer's weights are, and where its routed experts are."""
    kind = kinds[0]
    e4 = 4 * g.tokens * g.n_embd
    on_cpu = kind == W_CPU
    norm = _norm(b, e4, x, 4 * g.n_embd, kind)
    # build_attn expands Q, V, K in that order, its iSWA variant Q, K, V (llama-graph.cpp)
    q = _query_or_key(b, g, g.rq, w.q, kind, norm, rope, rot[0])
    if g.iswa:
        k = _query_or_key(b, g, c.rk, w.k, kind, norm, rope, rot[0])
    v = b.node(c.rk, b.leaf(w.v, kind), norm)
    if g.rotate[1]:
        v = b.node(c.rk, rot[1], v)
    if not g.iswa:
        k = _query_or_key(b, g, c.rk, w.k, kind, norm, rope, rot[0])
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
    if out_ids >= 0:  # the last layer goes on with the output rows only (before gemma3's post-norm)
        att = b.node(g.out_rows, att, out_ids)
        x = b.node(g.out_rows, x, out_ids)
    if g.post_norm:
        att = _norm(b, g.out_rows if out_ids >= 0 else e4, att, 4 * g.n_embd, kind)
    ffn_inp = b.node(g.out_rows if out_ids >= 0 else e4, att, x, inplace=True)
    rows = g.out_rows if out_ids >= 0 else e4
    h = _norm(b, rows, ffn_inp, 4 * g.n_embd, kind)
    scale = rows // e4 if out_ids >= 0 else 1
    if g.experts:
        h = _experts(b, g, w, c, kinds, h, scale)
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
    b: Graph, g: ReplayGraph, rows: int, weight: int, kind: str, x: int, rope: tuple[int, ...], rot: int
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
    y = b.node(rows, y, *rope, inplace=g.qk_norm)
    return b.node(rows, rot, y) if g.rotate[0] else y


def _experts(
    b: Graph, g: ReplayGraph, w: LayerWeights, c: LayerCache, kinds: tuple[str, str], h: int, scale: int
) -> int:
    """qwen3moe's routed FFN as llm_graph_context::build_moe_ffn builds it, with the two
    allocation dependencies ggml-cuda's graph_optimize adds for its fusions
    (ggml_backend_cuda_graph_optimize): the top-k chain (softmax .. normalised weights) and
    its sources stay until the node after it, and the expert outputs and their weights until
    the weighted sum's last add. A kept tensor has a second consumer, so the op after it gets
    a new block instead of its place; an op on a view (the first add of two expert views, the
    division of the reshaped weights) never takes its parent's place either."""
    assert g.experts is not None
    n_expert, used = g.experts
    kind, experts_kind = kinds
    t = g.tokens * scale
    # ggml-cuda fuses the top-k chain for these expert counts (ggml_cuda_should_use_topk_moe)
    fused = (n_expert & (n_expert - 1) == 0 and n_expert <= 512) or n_expert in (288, 576)
    logits = b.node(4 * t * n_expert, b.leaf(w.router, kind), h)
    probs = b.node(4 * t * n_expert, logits, inplace=not fused)  # soft_max
    order = b.node(4 * t * n_expert, probs)  # argsort (the top-k ids are a view of it)
    weights = b.node(4 * t * used, probs, order)  # get_rows
    total = b.node(4 * t, weights)  # sum_rows
    clamped = b.node(4 * t, total, inplace=not fused)  # clamp
    normed = b.node(4 * t * used, weights, clamped)  # div
    if fused:  # the chain and its sources are kept until the node after it
        b.node(0, logits, probs, order, weights, total, clamped, normed)
    gate = b.node(c.rf * scale, b.leaf(w.gate, experts_kind), h, order)
    up = b.node(c.rf * scale, b.leaf(w.up, experts_kind), h, order)
    act = b.node(c.rf * scale, gate, up)
    down = b.node(4 * t * used * g.n_embd, b.leaf(w.down, experts_kind), act, order)
    weighted = b.node(4 * t * used * g.n_embd, down, normed)
    out = b.node(4 * t * g.n_embd, weighted)  # the first add, of two views of `weighted`
    for _ in range(used - 2):
        out = b.node(4 * t * g.n_embd, out, weighted, inplace=True)
    if used <= _MOE_REDUCTION_MAX_EXPERTS:  # the weighted-sum fusion keeps these until here
        b.node(0, down, normed)
    return out


#: ggml-cuda fuses the weighted sum of at most this many experts (MOE_WEIGHTED_REDUCTION_MAX_EXPERTS)
_MOE_REDUCTION_MAX_EXPERTS = 15


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
