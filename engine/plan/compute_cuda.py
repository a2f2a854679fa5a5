"""llama.cpp's CUDA compute buffers (GPU and CUDA_Host), from what its scheduler allocates.

On one GPU, for the families engine.plan.compute_replay follows node for node, the GPU buffer
is that replay (exact on every recorded dry run); the GPU terms below are what other models,
several GPUs and the stated bounds use.

`sched_reserve` splits the worst-case graph (n_ubatch tokens, every KV cell) between the GPU
and the host, and ggml-alloc sizes one buffer per backend (notes §9). Read from the source
(ggml-backend.cpp `ggml_backend_sched_split_graph`, ggml-cuda `get_alloc_size`,
fattn.cu `ggml_cuda_flash_attn_ext_get_alloc_size`) and `GGML_SCHED_DEBUG=2` dumps of real
shapes on an H200 (benchmarks/gpu_compute.py):

* Host (`CUDA_Host`): the graph inputs, which the scheduler always places on the CPU and keeps
  for the whole graph: token ids, the `inp_embd` row and the `get_rows` result (token_embd is
  a host tensor), the KQ mask(s) (f16 with flash attention, f32 without),
  K/V row indices (without flash attention V is written transposed: one i64 per element),
  positions and output ids; with quantized K/V the Hadamard rotation matrices. Exact.
* GPU, every layer offloaded: the peak of (a) the output phase, logits `n_vocab × n_outputs`
  f32 + the normed hidden row, and (b) the attention phase: a GPU copy of the KQ mask(s),
  live from the first to the last layer, plus, with flash attention and a quantized cache,
  the f16 copies of K and V of every cell that CUDA's FA kernel appends to its output tensor
  (`get_alloc_size`), plus two hidden and two query rows. Dense models: exact to 0.1 MiB
  except f16 caches at 128k (a fitted row count, up to +24 MiB) and without flash attention
  (the CPU-calibrated phase less one row, +4 to +28 MiB); routed experts add a stated term.
* GPU with layers on the CPU (op_offload, on by default): a matmul on a host weight with
  ≥ 32 tokens runs on the GPU, and the scheduler copies that *weight* into the GPU compute
  buffer, one split per weight so only one is live; the flash-attention (or KQ) op of a CPU
  layer follows onto the GPU too and copies that layer's K and V cache views (cache type,
  every cell). With the output layer on the CPU (n_gpu_layers = 0) the output matrix is
  copied as well. Where these copies land next to the activations depends on ggml-alloc's
  free-block order: for the families engine.plan.compute_replay follows, that module replays
  the allocator; for the others they are sized here as a sum of what is live plus a stated
  allowance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.core.memory_types import MiB
from engine.plan.context import BLOCKS

if TYPE_CHECKING:
    from engine.plan.compute_shape import ComputeShape
    from engine.plan.context import Resolved

# ggml-alloc places a weight copy, the K/V copies and the activations of a CPU-resident layer
# in freed blocks of other sizes; on the grid (5 shapes × layer splits × K/V types × FA ×
# 4k-128k) the layout cost up to this much beyond the live tensors (plus the largest copy,
# see partial_offload_allowance). Stated in the plan notes.
PARTIAL_ALLOWANCE_ROWS = 6


@dataclass(frozen=True)
class CudaModel:
    """What sizes the CUDA buffers beyond ComputeShape (built once per model)."""

    k_width: int  # widest n_embd_k_gqa over attention layers
    v_width: int
    head_dim: int  # rotation matrices with quantized K/V
    max_layer_matrix: tuple[int, ...]  # per layer: CUDA bytes of its largest weight
    output_matrix: int  # CUDA bytes of the output matrix (or tied token_embd)


@dataclass(frozen=True)
class CudaGraph:
    """One reserve graph as the CUDA terms see it: the model, the context and the cache types.

    The terms below all read the same few derived sizes (tokens per ubatch, KQ masks, cache
    cells, the f16 copies flash attention makes of a quantized cache); they are computed here
    once rather than in each term from a long argument list."""

    shape: ComputeShape
    cm: CudaModel
    r: Resolved
    fa_on: bool
    n_swa_cells: int
    types: tuple[str, str]  # K and V cache types

    @property
    def tokens(self) -> int:
        return ubatch_tokens(self.r)

    @property
    def quant(self) -> tuple[bool, bool]:
        """Whether K and V are block-quantized."""
        return BLOCKS[self.types[0]][0] > 1, BLOCKS[self.types[1]][0] > 1

    @property
    def type_bytes(self) -> tuple[float, float]:
        """Bytes per element of K and V."""
        return tuple(BLOCKS[x][1] / BLOCKS[x][0] for x in self.types)  # type: ignore[return-value]

    def masks(self) -> int:
        """KQ mask bytes: [cells per stream, tokens per stream, 1, streams], f16 with flash
        attention, f32 without (llama-graph.cpp: no token padding in this tree)."""
        shape, r = self.shape, self.r
        cells = (r.n_ctx_seq if shape.has_full else 0) + (self.n_swa_cells if shape.has_swa else 0)
        return (2 if self.fa_on else 4) * cells * self.tokens

    def cells(self) -> int:
        """Cells of one layer's cache, every stream (the full cache where there is one)."""
        r = self.r
        return (r.n_ctx_seq if self.shape.has_full else self.n_swa_cells) * r.n_stream

    def f16_copies(self) -> int:
        """The f16 copies of a quantized K and V that CUDA's flash-attention kernel appends
        to its output tensor (``get_alloc_size``), one layer's worth."""
        qk, qv = self.quant
        return 2 * self.cells() * ((self.cm.k_width if qk else 0) + (self.cm.v_width if qv else 0))

    def rotations(self) -> int:
        """The Hadamard rotation matrices of a quantized cache, one pair per cache: an iSWA model
        has two (llama-graph.cpp, llm_graph_input_attn_kv_iswa::set_input: k_rot/v_rot and
        k_rot_swa/v_rot_swa)."""
        if not any(self.quant):
            return 0
        n_caches = 2 if self.shape.has_full and self.shape.has_swa else 1
        return n_caches * (4 * self.cm.head_dim * self.cm.head_dim + 4 * 64 * 64)


def ubatch_tokens(r: Resolved) -> int:
    """Tokens of the reserve graph: one ubatch, rounded up to whole streams."""
    t0 = min(r.n_ctx, r.n_ubatch)
    return -(-t0 // r.n_seq) * r.n_seq


def host_bytes(g: CudaGraph) -> int:
    """CUDA_Host compute buffer: the graph inputs (see the module docstring)."""
    shape, r, t = g.shape, g.r, g.tokens
    e = shape.n_embd
    b = 8 * t * e + 4 * t * 3 + 4 * min(t, r.n_outputs_max)  # inp_embd + get_rows; tokens, pos
    if shape.q_width:
        b += g.masks()
        n_caches = 2 if shape.has_full and shape.has_swa else 1
        b += n_caches * 8 * t * (1 + (1 if g.fa_on else g.cm.v_width))  # K and V row indices
        b += g.rotations()
    return b


def gpu_full(g: CudaGraph) -> dict[str, int]:
    """Phases of the GPU buffer when every layer and the output are on the GPU."""
    shape, r, t = g.shape, g.r, g.tokens
    e, q = shape.n_embd, shape.q_width
    t_out = min(t, r.n_outputs_max)
    ph = {"output": 4 * t_out * shape.n_vocab + 4 * t * e}
    if q and g.fa_on:
        kv16 = g.f16_copies()
        if kv16:
            ph["attention"] = g.masks() + kv16 + 4 * t * (2 * e + 2 * q) + g.rotations()
        else:  # f16 cache: no copies, but more rows stay live (fitted: 70B, 32B at 128k)
            ph["attention"] = g.masks() + 4 * t * (6 * e + 9 * q)
    return ph


def partial_offload_phases(
    g: CudaGraph, cpu_layers: list[int], output_on_cpu: bool, state_copy: int = 0
) -> dict[str, int]:
    """GPU phase that op_offload adds for layers whose weights stay on the host: the largest
    weight copy, one layer's K/V cache copies (cache type, every cell; with flash attention
    on a quantized cache also its f16 copies; without flash attention the f32 KQ scores), the
    mask copy and the FFN/attention rows. The dumps show these copies do not reuse each
    other's blocks (the K/V block is freed while a weight copy is placed), so they are added;
    with the output layer on the CPU the output matrix copy and the logits come on top.
    A recurrent layer on the CPU reads its state through `build_rs`, a get_rows over the
    whole layer tensor (every cell, llama-graph.cpp): on the GPU side the scheduler copies
    that tensor in as the split input, so state_copy (one layer's r + s states) is added."""
    shape, cm, r, t = g.shape, g.cm, g.r, g.tokens
    e, q = shape.n_embd, shape.q_width
    if not cpu_layers and not output_on_cpu:
        return {}
    mask = g.masks() if q else 0
    b = mask + 4 * t * (2 * shape.ffn_width + 4 * e + 2 * q)
    if cpu_layers:
        b += max(cm.max_layer_matrix[il] for il in cpu_layers)
        if q:
            cells = g.cells()
            tb = g.type_bytes
            b += int(cells * cm.k_width * tb[0]) + int(cells * cm.v_width * tb[1])
            if g.fa_on:
                b += g.f16_copies()
            else:
                b += 4 * cells * t * shape.n_head  # the f32 KQ scores
    b += state_copy
    if output_on_cpu:
        b += cm.output_matrix
    if output_on_cpu or len(cpu_layers) == len(cm.max_layer_matrix):
        # no repeating layer on the GPU (n_gpu_layers 0 or 1): the logits land beyond the
        # copies too (held-out grid: 8B and gemma3 at n_gpu_layers = 1 were 20-52 MiB under)
        b += 4 * min(t, r.n_outputs_max) * shape.n_vocab
    return {"CPU layers on the GPU (op_offload)": b}


def allowance(g: CudaGraph, cpu_layers: list[int], output_on_cpu: bool) -> int:
    """The stated safety term for partial offload (module docstring)."""
    if not cpu_layers and not output_on_cpu:
        return 0
    return PARTIAL_ALLOWANCE_ROWS * 4 * g.tokens * max(g.shape.n_embd, g.shape.q_width)


def moe_extra(g: CudaGraph) -> int:
    """Routed experts: on the grid (Qwen3-30B-A3B dims) the GPU buffer sat 30-41 MiB above
    every phase above at any context, FA on or off (the expert-gather rows and the fused
    top-k/weighted-sum alloc deps of ggml-cuda's graph_optimize): four used-expert FFN rows
    per token, added to the peak."""
    return 4 * 4 * g.tokens * g.shape.ffn_width if g.shape.moe_used else 0


def describe(ph: dict[str, int]) -> str:
    name = max(ph, key=lambda k: ph[k])
    return f"peak in the {name} phase (" + ", ".join(f"{k} {v / MiB:.2f}" for k, v in ph.items()) + " MiB)"


_FA_HEADS = {40, 64, 72, 80, 96, 112, 128, 256}


def has_fa_kernel(head_k: int, head_v: int, gqa: int) -> bool:
    """Whether ggml-cuda has a FLASH_ATTN_EXT kernel for these head sizes and GQA ratio
    (fattn.cu: ggml_cuda_get_best_fattn_kernel; the cache types are all supported)."""
    if head_k in _FA_HEADS:
        return head_v == head_k
    return (
        ((head_k, head_v) in ((576, 512), (512, 512)) and gqa >= 2)
        or ((head_k, head_v) == (192, 128) and gqa % 8 == 0)
        or ((head_k, head_v) == (320, 256) and gqa % 32 == 0)
    )
