"""The core messages: load, generate, cancel, stats, tokenize, unload and their events.

Registered with :func:`engine.protocol.base.message`; the tools' messages (bench, precision,
pairing, drafts) are in :mod:`engine.protocol.tools`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.core.memory_types import PlanSettings
from engine.protocol.base import Message, message

# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class LoadParams:
    """What a load request carries: the planned settings themselves, plus what is not planned.

    ``settings`` is the very :class:`PlanSettings` the memory plan sized, so what is planned is
    what is loaded: no field is copied by hand, and ``n_ctx = 0`` means the training context in
    both places (as in llama.cpp). On the wire it is ``to_dict()``, rebuilt by ``from_dict``.
    """

    path: str
    settings: PlanSettings = field(default_factory=PlanSettings)
    n_threads: int = 0  # 0: physical cores
    #: Size everything without allocating weights or KV (llama.cpp's no_alloc), then unload.
    dry_run: bool = False
    #: With ``dry_run``: also size this Gemma 4 assistant's drafting context next to the target.
    draft: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "settings": self.settings.to_dict(),
            "n_threads": self.n_threads,
            "dry_run": self.dry_run,
            "draft": self.draft,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadParams:
        return cls(
            path=str(data["path"]),
            settings=PlanSettings.from_dict(data.get("settings") or {}),
            n_threads=int(data.get("n_threads", 0)),
            dry_run=bool(data.get("dry_run", False)),
            draft=str(data.get("draft", "")),
        )


@message
@dataclass(frozen=True)
class LoadRequest(Message):
    TYPE: ClassVar[str] = "load"
    id: int
    params: dict[str, Any]


@message
@dataclass(frozen=True)
class GenerateRequest(Message):
    TYPE: ClassVar[str] = "generate"
    id: int
    prompt: str
    max_tokens: int = 512
    sampling: dict[str, Any] = field(default_factory=dict)
    #: Never let the first sampled token end the reply (base models often stop at once).
    no_empty: bool = True
    stream: bool = True
    #: Speculative decoding (engine.child.speculative): "" none, "model" (the loaded draft), "lookup".
    draft: str = ""
    draft_max: int = 8
    #: Continuous batching (engine.child.batch): end the reply before the first of these strings,
    #: and ``serve`` sends the request there even on a one-sequence context (the API server).
    stop: list[str] = field(default_factory=list)
    serve: bool = False
    #: Constrained sampling (engine.child.grammar): a GBNF grammar, or a JSON schema (as JSON
    #: text) that the child converts to GBNF with llama-cpp-python's converter. Either one sends
    #: the request to the batch loop, which puts llama.cpp's grammar sampler first in its chain.
    grammar: str = ""
    json_schema: str = ""
    #: -1: no log-probabilities; k >= 0: the sampled token's and the k most likely tokens'.
    logprobs: int = -1


@message
@dataclass(frozen=True)
class CancelRequest(Message):
    """Handled by the child's reader thread at once, even while a generation runs."""

    TYPE: ClassVar[str] = "cancel"
    id: int = 0


@message
@dataclass(frozen=True)
class StatsRequest(Message):
    TYPE: ClassVar[str] = "stats"
    id: int = 0


@message
@dataclass(frozen=True)
class TokenizeRequest(Message):
    TYPE: ClassVar[str] = "tokenize"
    id: int
    text: str
    add_special: bool = True


@message
@dataclass(frozen=True)
class DetokenizeRequest(Message):
    TYPE: ClassVar[str] = "detokenize"
    id: int
    tokens: list[int]


@message
@dataclass(frozen=True)
class Detokenized(Message):
    TYPE: ClassVar[str] = "detokenized"
    id: int
    text: str


@message
@dataclass(frozen=True)
class EmbedRequest(Message):
    """Pooled embeddings of ``texts`` (only for models whose GGUF metadata declares a pooling)."""

    TYPE: ClassVar[str] = "embed"
    id: int
    texts: list[str]
    normalize: bool = True


@message
@dataclass(frozen=True)
class Embeddings(Message):
    TYPE: ClassVar[str] = "embeddings"
    id: int
    vectors: list[list[float]]
    n_tokens: int
    pooling: str


@message
@dataclass(frozen=True)
class UnloadRequest(Message):
    TYPE: ClassVar[str] = "unload"
    id: int = 0


@message
@dataclass(frozen=True)
class ShutdownRequest(Message):
    TYPE: ClassVar[str] = "shutdown"
    id: int = 0


# ----------------------------------------------------------------------------- events


@message
@dataclass(frozen=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    pid: int
    llama_cpp_python: str
    gpu_offload: bool
    system_info: str


@message
@dataclass(frozen=True)
class LogEvent(Message):
    """A line from llama.cpp's log callback; ``level`` is a Python logging level."""

    TYPE: ClassVar[str] = "log"
    level: int
    text: str


@message
@dataclass(frozen=True)
class Progress(Message):
    TYPE: ClassVar[str] = "progress"
    id: int
    fraction: float


@message
@dataclass(frozen=True)
class Loaded(Message):
    TYPE: ClassVar[str] = "loaded"
    id: int
    path: str
    description: str
    n_ctx: int
    n_ctx_train: int
    n_ctx_seq: int
    n_vocab: int
    n_params: int
    model_bytes: int
    n_gpu_layers: int
    gpu_offload: bool
    recurrent: bool
    hybrid: bool
    n_threads: int
    load_s: float
    chat_template: str
    bos_text: str
    eos_text: str
    #: llama.cpp's log lines about buffer sizes, context and cache geometry during this load.
    memory_log: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: MTP self-drafting (settings.mtp): the model's nextn layer count, and "ready" or the sentence
    #: saying why the model cannot draft for itself (chat then works without drafting).
    n_layer_nextn: int = 0
    mtp: str = ""
    #: How many of ``memory_log``'s lines are the target's; the rest are its drafting context's
    #: (MTP heads or, in a dry run, an assistant). 0: all of them.
    n_log_target: int = 0
    #: How llama.cpp read the weights, in its own word (``llama_load_mode_name``): "mmap" (the file
    #: mapped) or "none" (copied in). PlanSettings.load_mode "mmap" asks for its AUTO, which copies
    #: where a device cannot map (src/llama-model.cpp:1512-1537); a dry run always copies.
    load_mode: str = ""


@message
@dataclass(frozen=True)
class Started(Message):
    """Prompt tokenised; ``n_reused`` tokens came from the KV cache of the previous turn."""

    TYPE: ClassVar[str] = "started"
    id: int
    n_prompt: int
    n_reused: int
    #: The batch loop's step (counted since the child started) whose decode ended this prompt's
    #: prefill; prompts that were waiting together share one. 0 outside the batch loop.
    step: int = 0


@message
@dataclass(frozen=True)
class Delta(Message):
    """Newly generated text; several tokens may be coalesced into one delta."""

    TYPE: ClassVar[str] = "delta"
    id: int
    text: str
    tokens: list[int]
    n_past: int = 0  # tokens now in the sequence's KV cache (for the occupancy view)
    #: Running speculative-decoding counts of this reply (0 without drafting).
    n_drafted: int = 0
    n_accepted: int = 0
    #: With ``GenerateRequest.logprobs``: one entry per token of ``tokens`` (engine.child.logprobs).
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@message
@dataclass(frozen=True)
class Done(Message):
    TYPE: ClassVar[str] = "done"
    id: int
    text: str
    tokens: list[int]
    n_prompt: int
    n_reused: int
    stop_reason: str  # eog | length | cancelled | context
    prefill_s: float
    first_token_s: float
    decode_s: float
    tokens_per_s: float
    #: Speculative decoding (engine.child.speculative); all 0 / "" for plain decoding.
    draft: str = ""
    n_drafted: int = 0
    n_accepted: int = 0
    n_target_decodes: int = 0
    acceptance: float = 0.0  # n_accepted / n_drafted
    mean_accepted: float = 0.0  # accepted draft tokens per verify batch that had drafts
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # one entry per token
    #: Per draft position (1st, 2nd, ... drafted token of a step): how often one was drafted there
    #: and how often it was accepted; acceptance at position i is accepted_at[i] / drafted_at[i].
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)


@message
@dataclass(frozen=True)
class Slots(Message):
    """Per-sequence KV occupancy while the batch loop runs (engine.child.batch), for the KV view:
    ``n_past[i]`` tokens in sequence i, ``requests[i]`` its request id (0: free)."""

    TYPE: ClassVar[str] = "slots"
    n_past: list[int]
    requests: list[int]
    n_ctx_seq: int
    n_waiting: int = 0
    id: int = 0
    #: Where the batch loop's time went since the child started (engine.child.batch): steps run,
    #: seconds in llama_decode until the device finished, seconds sampling, seconds in the loop.
    steps: int = 0
    decode_s: float = 0.0
    sample_s: float = 0.0
    busy_s: float = 0.0
    #: Steps with no prompt rows (every row a generated token) and their llama_decode seconds:
    #: what llama-batched-bench's generation phase times.
    gen_steps: int = 0
    gen_decode_s: float = 0.0
    #: Those steps' sampling seconds; and, over every step, the seconds of the first logits
    #: access, where llama.cpp swaps rows back into batch order after a ubatch split (reorder).
    gen_sample_s: float = 0.0
    reorder_s: float = 0.0
    #: Rows sampled from the candidates the device kept (engine.child.device_cut).
    cut_rows: int = 0
    #: Steps put on the device as soon as the step before was sampled, before its tokens were
    #: taken (engine.child.batch), and their seconds from those logits to that launch.
    followed: int = 0
    relaunch_s: float = 0.0
    #: Of the sampling seconds, those inside the native row sampler's call (engine.child.topk_cut).
    native_s: float = 0.0
    #: Device cuts attached to a sequence (engine.child.device_cut), each a rebuild of the graphs.
    cut_attached: int = 0
    #: Per sequence: True while its request samples on the device (engine.child.batch_backend).
    device: list[bool] = field(default_factory=list)


@message
@dataclass(frozen=True)
class Tokens(Message):
    TYPE: ClassVar[str] = "tokens"
    id: int
    tokens: list[int]


@message
@dataclass(frozen=True)
class Stats(Message):
    TYPE: ClassVar[str] = "stats_reply"
    id: int
    loaded: bool
    n_ctx: int
    kv_pos_min: int
    kv_pos_max: int
    n_cached_tokens: int
    rss_bytes: int


@message
@dataclass(frozen=True)
class Unloaded(Message):
    TYPE: ClassVar[str] = "unloaded"
    id: int


@message
@dataclass(frozen=True)
class ErrorEvent(Message):
    """A request failed but the child is alive and ready for the next one."""

    TYPE: ClassVar[str] = "error"
    id: int
    kind: str  # model | params | runtime | busy
    message: str
