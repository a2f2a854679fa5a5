"""One loaded model and its context: the interface every generation path uses.

``engine.child.session`` loads and unloads; what is loaded is a :class:`Model`, and plain
decoding (``engine.child.decode``), the batch loop, speculative decoding and the tools all work
through its public attributes and methods. It is a plain object rather than a base class so that
each of those paths can be read on its own and none reaches into another's state.

The raw llama.cpp handles (``model``, ``ctx``, ``mem``, ``batch``) are public on purpose: the hot
loops call ``llama_decode`` on them directly, because a Python method call per token would cost
a measurable share of a token's time. Runs only in the runtime child, on its main thread.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

import gguf
import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError
from engine.child.native_log import NativeLog

#: llama.cpp's flash-attention settings by the names KV Deck uses.
FLASH = {
    "auto": LL.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": LL.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": LL.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


def ggml_type_id(name: str) -> int:
    """The ggml type of a KV cache type name; an unknown one is refused in words."""
    if name not in KV_TYPES:
        raise RequestError(
            ErrorKind.PARAMS, f"unknown KV cache type {name!r}; choose one of {', '.join(KV_TYPES)}"
        )
    return int(gguf.GGMLQuantizationType[name.upper()])


def flash_type(name: str) -> int:
    """llama.cpp's flash-attention enum for auto/on/off; anything else is refused in words."""
    if name not in FLASH:
        raise RequestError(ErrorKind.PARAMS, f"flash attention must be auto, on or off, not {name!r}")
    return FLASH[name]


def params_like(t: object) -> LL.llama_context_params:
    """Context parameters shaped like the live context ``t`` (size, batches, sequences, threads):
    a drafter's context is always the target's, never its own defaults or the user's input (its
    training context may be far larger than the fitted target's)."""
    cp = LL.llama_context_default_params()
    cp.n_ctx = int(LL.llama_n_ctx(t))
    cp.n_batch, cp.n_ubatch = int(LL.llama_n_batch(t)), int(LL.llama_n_ubatch(t))
    cp.n_seq_max = int(LL.llama_n_seq_max(t))
    cp.n_threads, cp.n_threads_batch = int(LL.llama_n_threads(t)), int(LL.llama_n_threads_batch(t))
    return cp


@dataclass(eq=False)
class Model:
    """A model, its context and sequence 0's state; identity matters (caches key on it)."""

    model: object
    ctx: object
    vocab: object
    mem: object
    batch: LL.llama_batch
    n_ctx: int
    n_batch: int
    n_vocab: int
    eog: np.ndarray  # bool per token id
    eog_ids: list[int]
    bos: int
    path: str
    log: NativeLog
    #: Tokens whose KV is in sequence 0, in order: the prefix a next request may reuse.
    cached: list[int] = field(default_factory=list)
    #: Tokens whose KV is in sequences 1.. (the batch loop's per-slot prefix cache; sequence 0's
    #: is ``cached``). Emptied with the cache by :meth:`clear`.
    seq_cached: dict[int, list[int]] = field(default_factory=dict)
    #: Detokenised pieces of tokens generated so far (filled by the decode loops).
    pieces: dict[int, bytes] = field(default_factory=dict)
    #: The candidate cut (engine.child.device_cut) was refused where this context keeps its
    #: logits (a CPU, or a device lacking an operation): no batch run attaches it again.
    cut_refused: bool = False

    def __post_init__(self) -> None:
        # numpy views of the batch's token, pos and logits arrays; every row is set to sequence 0
        # once here, since nothing that uses this batch decodes another sequence.
        b, n = self.batch, self.n_batch
        for i in range(n):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        self.views = (
            np.ctypeslib.as_array(b.token, (n,)),
            np.ctypeslib.as_array(b.pos, (n,)),
            np.ctypeslib.as_array(b.logits, (n,)),
        )

    def free(self) -> None:
        """Free the batch, the context and the weights (the object is unusable afterwards)."""
        LL.llama_batch_free(self.batch)
        LL.llama_free(self.ctx)
        LL.llama_model_free(self.model)
        self.cached = []

    # ------------------------------------------------------------------ context facts
    @property
    def n_seq_max(self) -> int:
        return int(LL.llama_n_seq_max(self.ctx))

    @property
    def n_ctx_seq(self) -> int:
        return int(LL.llama_n_ctx_seq(self.ctx))

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        arr = (LL.llama_token * cap)()
        n = LL.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, True)
        if n < 0:
            cap = -n
            arr = (LL.llama_token * cap)()
            n = LL.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, True)
        tokens = list(arr[:n])
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]  # the template wrote BOS itself and the tokenizer added another
        return tokens

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Tokenise a prompt and refuse, in words, one that is empty or leaves no room to reply."""
        tokens = self.tokenize(prompt)
        if not tokens:
            raise RequestError(ErrorKind.PARAMS, "the prompt is empty")
        if self.n_ctx - len(tokens) < 2:
            raise RequestError(
                ErrorKind.CONTEXT,
                f"the conversation is {len(tokens)} tokens long but the context "
                f"holds {self.n_ctx}; start a new chat or load with a larger context",
            )
        return tokens

    def piece(self, token: int, buf: ctypes.Array) -> bytes:
        """The bytes of one token (``buf`` is a scratch buffer the caller keeps)."""
        n = LL.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = LL.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
            return big.raw[:n]
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """The literal text of a special token (for templates' ``bos_token``), or ''."""
        if not 0 <= token < self.n_vocab:
            return ""
        return (LL.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    # ------------------------------------------------------------------ decoding sequence 0
    def check(self, rc: int) -> None:
        """Turn llama_decode's return code into a RequestError (0 is success)."""
        if rc == 0:
            return
        if rc == 1:
            raise RequestError(ErrorKind.CONTEXT, "the context is full (no free KV cache slot)")
        if rc == 2:
            raise RequestError(ErrorKind.CANCELLED, "cancelled")
        raise RequestError(
            ErrorKind.RUNTIME, f"llama_decode failed with code {rc}: {self.log.last_problem()}"
        )

    def prefill(self, tokens: list[int], pos0: int, cancel: threading.Event) -> None:
        """Decode ``tokens`` at ``pos0`` in chunks of n_batch; logits only for the last one.

        The batch is filled through numpy views: a field-by-field ctypes fill costs about a
        microsecond per token, which is 1 % of a GPU prefill of 512 tokens.
        """
        b = self.batch
        tok_a, pos_a, out_a = self.views
        for start in range(0, len(tokens), self.n_batch):
            if cancel.is_set():
                raise RequestError(ErrorKind.CANCELLED, "cancelled")
            chunk = tokens[start : start + self.n_batch]
            n = len(chunk)
            tok_a[:n] = chunk
            pos_a[:n] = np.arange(pos0 + start, pos0 + start + n, dtype=np.int32)
            out_a[:n] = 0
            out_a[n - 1] = 1 if start + n == len(tokens) else 0
            b.n_tokens = n
            self.check(LL.llama_decode(self.ctx, b))
            self.cached.extend(chunk)

    def reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the KV cache of the longest common prefix with the last request (multi-turn chat)."""
        n = 0
        for a, b in zip(self.cached, tokens):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1)  # at least one token must be decoded to get logits
        if n < len(self.cached):
            if not self.truncate(n):
                n = 0
        return n

    def truncate(self, n: int) -> bool:
        """Drop sequence 0's cells from position n on; False (and all cleared) when the state
        cannot roll back partially (recurrent models)."""
        if LL.llama_memory_seq_rm(self.mem, 0, n, -1):
            del self.cached[n:]
            return True
        self.clear()
        return False

    def clear(self) -> None:
        """Empty the whole KV cache (every sequence) and forget the cached prefix."""
        self.cached.clear()
        self.seq_cached.clear()
        LL.llama_memory_clear(self.mem, True)

    def pos_range(self, seq: int = 0) -> tuple[int, int]:
        """(lowest, highest) position held for a sequence; (-1, -1) when it is empty."""
        return (
            int(LL.llama_memory_seq_pos_min(self.mem, seq)),
            int(LL.llama_memory_seq_pos_max(self.mem, seq)),
        )
