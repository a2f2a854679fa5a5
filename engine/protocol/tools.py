"""Protocol messages of the runtime's tools: benchmark, KV precision check, draft pairing and
speculative drafts. Split from ``engine.protocol`` (the core load/generate messages) to keep
each file readable; ``engine.protocol`` re-exports these too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.protocol.base import Message, message

# ----------------------------------------------------------------------------- benchmark


@message
@dataclass(frozen=True)
class BenchRequest(Message):
    """Measure prefill and decode on the loaded model, the way llama-bench does (engine.child.bench).

    ``sampling`` empty means greedy without penalties (what llama-bench's tg compares with);
    ``sampler`` picks the sampling path ("auto", "backend", "cpu", "cpu-chain", "backend-topk1")
    so each step of the hot loop can be measured; ``n_threads`` 0 keeps the loaded count.
    """

    TYPE: ClassVar[str] = "bench"
    id: int
    n_prompt: int = 512
    n_gen: int = 128
    depth: int = 0
    repetitions: int = 5
    sampling: dict[str, Any] = field(default_factory=dict)
    sampler: str = "auto"
    n_threads: int = 0


@message
@dataclass(frozen=True)
class BenchResult(Message):
    """Tokens per second of each repetition; the mean is what llama-bench reports as avg_ts."""

    TYPE: ClassVar[str] = "bench_result"
    id: int
    pp_tokens_per_s: list[float]
    tg_tokens_per_s: list[float]
    n_prompt: int = 0
    n_gen: int = 0
    depth: int = 0
    repetitions: int = 0
    #: The sampler chain as llama.cpp names it, '+' marking samplers that ran on the device.
    sampler: str = ""
    backend_sampling: bool = False
    n_threads: int = 0
    n_ctx: int = 0
    devices: list[str] = field(default_factory=list)
    #: Share of single-token decodes that reused the previous graph (llama_perf_context n_reused).
    graph_reuse: float = 0.0
    warmup_s: float = 0.0


# ----------------------------------------------------------------------------- KV precision check


@message
@dataclass(frozen=True)
class PrecisionRequest(Message):
    """Compare a candidate K/V cache with a full-precision one on the loaded model (engine.child.precision).

    ``n_ctx`` 0 sizes the check's own contexts to the longest prompt plus ``n_tokens``. The
    reference runs without flash attention by default: with it, llama.cpp casts an f32 cache to
    f16 before attention (llama-graph.cpp), so an f32+FA reference is really an f16 one.
    """

    TYPE: ClassVar[str] = "precision"
    id: int
    type_k: str
    type_v: str
    prompts: list[str]
    n_tokens: int = 30
    flash_attn: str = "on"
    n_ctx: int = 0
    reference_type_k: str = "f32"
    reference_type_v: str = "f32"
    reference_flash_attn: str = "off"


@message
@dataclass(frozen=True)
class PrecisionProgress(Message):
    """``done`` of ``total`` steps (a greedy run or a teacher-forced pass of one prompt)."""

    TYPE: ClassVar[str] = "precision_progress"
    id: int
    done: int
    total: int


@message
@dataclass(frozen=True)
class PrecisionResult(Message):
    """KL(ref || cand) and top-1 agreement over all teacher-forced positions, first greedy
    divergence per prompt (None: identical over the reference continuation)."""

    TYPE: ClassVar[str] = "precision_result"
    id: int
    type_k: str
    type_v: str
    reference_type_k: str
    reference_type_v: str
    flash_attn: str
    n_ctx: int
    n_tokens: int
    mean_kl: float
    max_kl: float
    top1_agreement: float
    first_divergence: list[int | None]
    n_positions: int
    #: Per prompt: PromptScore.to_dict() (n_positions, mean_kl, max_kl, texts, ...).
    prompts: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: The reference continuations came from an earlier check on the same loaded model.
    reference_cached: bool = False
    reference_flash_attn: str = "off"


@message
@dataclass(frozen=True)
class PairRequest(Message):
    """Check a target/draft pair with llama.cpp's speculative compatibility rules."""

    TYPE: ClassVar[str] = "pair"
    id: int
    target: str
    draft: str


@message
@dataclass(frozen=True)
class PairReply(Message):
    TYPE: ClassVar[str] = "pair_reply"
    id: int
    checks: list[dict[str, Any]]


# ----------------------------------------------------------------------------- speculative decoding


@message
@dataclass(frozen=True)
class LoadDraftRequest(Message):
    """Load a draft model beside the loaded target (engine.child.speculative).

    Its context is the target's: same n_ctx (never the draft's training default), n_seq_max,
    n_batch, n_ubatch and, unless ``flash_attn`` says otherwise, flash attention; the cache
    types are the draft's own. Refused with the reasons when the pair is not compatible.
    """

    TYPE: ClassVar[str] = "load_draft"
    id: int
    path: str
    type_k: str = "f16"
    type_v: str = "f16"
    n_gpu_layers: int = -1
    flash_attn: str = ""  # "": the target's


@message
@dataclass(frozen=True)
class DraftLoaded(Message):
    TYPE: ClassVar[str] = "draft_loaded"
    id: int
    path: str
    n_ctx: int
    n_ctx_train: int = 0
    n_vocab: int = 0
    description: str = ""
    n_params: int = 0
    model_bytes: int = 0
    n_gpu_layers: int = 0
    type_k: str = "f16"
    type_v: str = "f16"
    load_s: float = 0.0
    #: llama.cpp's log lines about the draft's buffers (its measured memory).
    memory_log: list[str] = field(default_factory=list)
    #: The pairing rules that were checked, as engine.plan.pairing.Check dicts.
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: "model" (a separate draft with its own KV) or "assistant" (Gemma 4: reads the target's KV).
    kind: str = "model"
    shares_target_kv: bool = False


@message
@dataclass(frozen=True)
class UnloadDraftRequest(Message):
    TYPE: ClassVar[str] = "unload_draft"
    id: int = 0


@message
@dataclass(frozen=True)
class DraftUnloaded(Message):
    TYPE: ClassVar[str] = "draft_unloaded"
    id: int
