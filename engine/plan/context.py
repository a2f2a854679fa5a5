"""The leaf of the memory plan: llama.cpp's context resolution and the value types of cache sizes.

`resolve_context` is llama_context's own resolution of context and batch sizes (notes §1);
`row_bytes`/`pad` are ggml_row_size and GGML_PAD; `CacheSize` is one `llama_kv_cache: size = …`
line. Every other plan module imports these; this one imports no other plan module, so sizing
(`engine.plan.kv_sizes`, `engine.plan.sparse_caches`) and compute (`engine.plan.compute`) never
form a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.core.memory_types import PlanSettings

#: ggml (block elements, block bytes) of the cache types (ggml_row_size).
BLOCKS = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "iq4_nl": (32, 18),
}

_U32 = 0xFFFFFFFF


def row_bytes(type_name: str, n: int) -> int:
    """ggml_row_size: bytes of n elements of a cache type."""
    block, size = BLOCKS[type_name]
    return n // block * size


def pad(x: int, n: int) -> int:
    """GGML_PAD in uint32 arithmetic, wrapping like the C code near 2**32."""
    return ((x + n - 1) // n * n) & _U32


@dataclass(frozen=True)
class Resolved:
    """§1: the numbers llama_context prints (`n_ctx = …`, `n_ctx_seq = …`, …)."""

    n_seq: int
    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int
    n_outputs_max: int
    n_stream: int


def resolve_context(s: PlanSettings, n_ctx_train: int, causal: bool = True) -> Resolved:
    """llama_context::llama_context's resolution of context and batch sizes."""
    n_seq = max(1, s.n_seq_max)
    n_ctx = (s.n_ctx or n_ctx_train) & _U32
    n_batch = min(n_ctx, s.n_batch) if causal else s.n_batch
    n_ubatch = min(n_batch, s.n_ubatch or n_batch)
    n_ctx = pad(n_ctx, 256)
    if s.kv_unified:
        n_ctx_seq = n_ctx
    else:
        n_ctx_seq = pad(n_ctx // n_seq, 256)
        n_ctx = (n_ctx_seq * n_seq) & _U32
    return Resolved(n_seq, n_ctx, n_ctx_seq, n_batch, n_ubatch, n_batch, 1 if s.kv_unified else n_seq)


@dataclass(frozen=True)
class CacheSize:
    """One llama_kv_cache (a `llama_kv_cache: size = …` line): exact tensor sums."""

    kind: str  # "attention", "full-attention" (iSWA base) or "SWA"
    layers: tuple[int, ...]
    cells: int  # per stream
    streams: int
    type_k: str
    type_v: str
    k_widths: tuple[int, ...]
    k_layer: tuple[int, ...]  # K bytes per layer (aligned with `layers`)
    v_layer: tuple[int, ...]
    k_only: bool = False  # stores no V (MLA, DSV4, indexer keys)
    label: str = ""  # what the cache holds, in words (sparse kinds, engine.plan.sparse_caches)

    @property
    def k_bytes(self) -> int:
        return sum(self.k_layer)

    @property
    def v_bytes(self) -> int:
        return sum(self.v_layer)

    def per_device(self, kv_dev: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """device -> (layers, K bytes, V bytes)."""
        out: dict[str, tuple[int, int, int]] = {}
        for il, k, v in zip(self.layers, self.k_layer, self.v_layer):
            n, kk, vv = out.get(kv_dev[il], (0, 0, 0))
            out[kv_dev[il]] = (n + 1, kk + k, vv + v)
        return out
