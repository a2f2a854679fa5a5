"""Sampling for the decode loop: which path a request takes, and the device sampler chain.

Split from ``engine.child.decode`` so the hot loop stays short. Runs only in the runtime child.

* Backend (device) sampling: the chain becomes part of the decode graph, so no O(vocabulary)
  pass runs on the CPU and, for a chain that cuts the candidates (top-k), not even the logits
  row crosses the bus. A chain can be attached to a context only once (a second attach
  aborts), must stay alive while attached, and attaching makes the next decode re-reserve the
  scheduler: so one chain stays attached until the sampling settings change, and is reset
  (reseeded, penalty history cleared) at the start of each request.
* Plain greedy decoding is a numpy argmax on the logits row (which llama.cpp copies to the
  host anyway) instead of llama.cpp's CPU sampler, which first copies the whole row into a
  candidate array: that O(vocabulary) pass cost 7 % of decode speed on an H100.
* The first token of a reply must not end it (base models often stop at once). On the CPU a
  logit-bias chain forbids end-of-generation tokens; with a device chain the token is picked
  again from what the device kept, or, when that is nothing but end-of-generation tokens,
  the last prompt token is decoded again without the device chain.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model
from engine.core.sampling import RANDOM_SEED, SamplingParams

#: auto: plain greedy as a numpy argmax, other chains on the device when there is a GPU, else
#: on the CPU; the others force one path for measuring (backend-topk1: greedy as top_k(1)+dist,
#: no logits row copied; cpu-chain: llama.cpp's CPU sampler for everything, the old loop).
SAMPLER_MODES = ("auto", "backend", "backend-topk1", "cpu", "cpu-chain")
DEFAULT_SAMPLER = os.environ.get("KVDECK_SAMPLER", "auto")

# A second handle on libllama whose functions get our own restypes: llama_cpp's function
# objects are shared, and a pointer returned as a plain int is what the argmax path needs.
_LIB = ctypes.CDLL(LL._lib._name)
_LIB.llama_get_logits_ith.restype = ctypes.c_void_p
_LIB.llama_get_logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]

Spec = tuple[tuple[Any, ...], ...]


#: llama.cpp's sampler order, restricted to the samplers KV Deck uses. common_sampler_init
#: (common/sampling.cpp:324-337) adds the logit bias first, then the ``samplers`` list in order
#: (:341-391), whose default is penalties, dry, top_n_sigma, top_k, typical_p, top_p, min_p,
#: xtc, temperature (common/common.h:263-273), then dist (:395). Greedy is temperature 0:
#: temp keeps only the highest logit (src/llama-sampler.cpp:265-283).
#: The largest k + n for which the exact top-(k + n) cut before the penalties pays (chain_spec).
PREFILTER_MAX = 4096

LLAMA_ORDER = ("logit_bias", "penalties", "top_k", "top_p", "min_p", "temp", "dist")


def penalty_on(s: SamplingParams, freq: float = 0.0, pres: float = 0.0) -> bool:
    """Whether the penalties sampler changes anything: llama.cpp's ``is_disabled``
    (src/llama-sampler.cpp:2885-2891: window 0, or repeat 1 with no frequency/presence)."""
    return s.repeat_last_n != 0 and not (s.repeat_penalty == 1.0 and freq == 0.0 and pres == 0.0)


def chain_spec(
    s: SamplingParams,
    *,
    device: bool,
    topk1: bool = False,
    forbid: tuple[int, ...] = (),
    freq: float = 0.0,
    pres: float = 0.0,
) -> Spec:
    """The sampler chain as data (so an attached chain can be compared with the next request's),
    in llama.cpp's order (:data:`LLAMA_ORDER`), so a seeded reply is llama-server's.

    Samplers that would do nothing are left out; llama.cpp itself builds them as empty ones
    (src/llama-sampler.cpp: disabled penalties :3211-3213, top-k <= 0 :1520-1523, top-p >= 1
    :1723, min-p <= 0 :1886), so the chain is still exactly llama.cpp's.
    Without a penalty the chain therefore starts with top-k, the fast path. A penalty does not
    commute with top-k (it can push a token out of the k best and let the next one in), so with
    one the penalties run on the whole vocabulary first, as in llama.cpp.

    That full pass costs about 0.36 ms a token at a 128k vocabulary (against 0.04 ms for top-k
    alone, this CPU), so on the CPU a penalty that can only lower logits (repeat >= 1,
    frequency and presence >= 0) first keeps the k + n best, n being the window: at most n
    distinct tokens are penalised, so every token outside those k + n still has k tokens above
    it and cannot reach the k best (greedy: k = 1). The candidates and their order are then
    llama.cpp's, short of exact ties at the cut (0.05 ms a token). Beyond :data:`PREFILTER_MAX`
    candidates the cut saves nothing and the chain is llama.cpp's literally.

    Greedy is the argmax of the penalised logits: top-k, top-p and min-p all keep the highest
    token, and temperature 0 keeps only it. On the device, greedy after a cut is wrong in this
    llama.cpp tree (the argmax indexes the candidates, not the vocabulary), so there greedy
    with a penalty ends in top_k(1) + dist, which maps the candidate back to its token id.
    """
    out: list[tuple[Any, ...]] = [("logit_bias", forbid)] if forbid else []
    penalised = penalty_on(s, freq, pres)
    if penalised:
        keep = (1 if s.greedy else s.top_k) + s.repeat_last_n
        lowers = s.repeat_penalty >= 1.0 and freq >= 0.0 and pres >= 0.0
        if not device and lowers and (s.greedy or s.top_k > 0) and keep <= PREFILTER_MAX:
            out.append(("top_k", keep))
        out.append(("penalties", s.repeat_last_n, s.repeat_penalty, freq, pres))
    if s.greedy:
        out += [("top_k", 1), ("dist", 0)] if device and (topk1 or penalised) else [("greedy",)]
        return tuple(out)
    if s.top_k > 0:
        out.append(("top_k", s.top_k))
    if s.top_p < 1.0:
        out.append(("top_p", s.top_p))
    if s.min_p > 0.0:
        out.append(("min_p", s.min_p))
    out += [("temp", s.temperature), ("dist", s.seed)]
    return tuple(out)


def feed_prompt(chain: object | None, s: SamplingParams, prompt: Sequence[int]) -> None:
    """Let the chain see the prompt, as llama-server does before a request's first token
    (tools/server/server-context.cpp:368-386, ``init_sampler``: ``common_sampler_accept`` of
    every prompt token), so the penalties' window starts with the prompt's last tokens.

    Only the penalties keep history among our samplers (a ring of ``repeat_last_n`` tokens,
    src/llama-sampler.cpp ``llama_sampler_penalties_accept``), so the prompt's tail is enough.
    Never give it a chain that starts with a grammar: llama.cpp does not feed the prompt to
    the grammar (common/sampling.cpp ``common_sampler_accept``: ``is_generated`` false).
    """
    if chain is None or s.repeat_last_n <= 0:
        return
    for tok in prompt[-s.repeat_last_n :]:
        LL.llama_sampler_accept(chain, tok)


def build_chain(spec: Spec, n_vocab: int) -> object:
    """A native sampler chain from spec data (``chain_spec``)."""
    chain = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
    for name, *args in spec:
        if name == "logit_bias":
            biases = (LL.llama_logit_bias * len(args[0]))(
                *[LL.llama_logit_bias(t, float("-inf")) for t in args[0]]
            )
            smpl = LL.llama_sampler_init_logit_bias(n_vocab, len(args[0]), biases)
        elif name == "penalties":
            smpl = LL.llama_sampler_init_penalties(n_vocab, *args)
        elif name == "top_p" or name == "min_p":
            smpl = getattr(LL, f"llama_sampler_init_{name}")(args[0], 1)
        else:
            smpl = getattr(LL, f"llama_sampler_init_{name}")(*args)
        LL.llama_sampler_chain_add(chain, smpl)
    return chain


def chain_name(chain: object) -> str:
    """llama.cpp's names of the chain's samplers; '+' marks those that run on the device."""
    n = LL.llama_sampler_chain_n(chain)
    return ",".join(LL.llama_sampler_name(LL.llama_sampler_chain_get(chain, i)).decode() for i in range(n))


def gpu_present() -> bool:
    """Whether ggml has a GPU device: then backend sampling moves sampling off the CPU."""
    if not LL.llama_supports_gpu_offload():
        return False
    lib = LL._lib
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    return any(
        lib.ggml_backend_dev_type(lib.ggml_backend_dev_get(i)) in (1, 2)  # GPU, IGPU
        for i in range(lib.ggml_backend_dev_count())
    )


def argmax_of(m: Model) -> Callable[[], int]:
    """Greedy without llama.cpp's O(vocab) candidate copy; the view is rebuilt only when the
    output buffer moved (it is reallocated when a batch needs more output rows)."""
    ctx, n, get = m.ctx, m.n_vocab, _LIB.llama_get_logits_ith
    state: list[Any] = [0, None]

    def sample() -> int:
        addr = get(ctx, -1)
        if addr != state[0]:
            state[0] = addr
            state[1] = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr))
        return int(state[1].argmax())

    return sample


def without_eog(m: Model, s: SamplingParams, idx: int) -> int | None:
    """Pick again from what the device chain left for output row ``idx``, minus
    end-of-generation tokens (None when nothing else is left)."""
    ctx = m.ctx
    n_probs = LL.llama_get_sampled_probs_count_ith(ctx, idx)
    n = n_probs or LL.llama_get_sampled_logits_count_ith(ctx, idx)
    if n == 0:
        return None
    ids = np.ctypeslib.as_array(LL.llama_get_sampled_candidates_ith(ctx, idx), (n,)).copy()
    ok = ~np.isin(ids, np.asarray(m.eog_ids, dtype=ids.dtype))
    if not ok.any():
        return None
    if s.greedy or not n_probs:
        vals = np.ctypeslib.as_array(LL.llama_get_sampled_logits_ith(ctx, idx), (n,)).copy()
        return int(ids[ok][np.argmax(vals[ok])])
    probs = np.ctypeslib.as_array(LL.llama_get_sampled_probs_ith(ctx, idx), (n,))[ok]
    if not probs.sum() > 0:
        return None
    rng = np.random.default_rng(None if s.seed == RANDOM_SEED else s.seed)
    return int(rng.choice(ids[ok], p=probs / probs.sum()))


@dataclass
class _Attached:
    model: Model  # the Model itself: a new context may reuse a freed one's address
    spec: Spec
    chain: object


@dataclass
class Sampling:
    """How one request samples. ``chain`` None means numpy argmax on the logits row."""

    params: SamplingParams
    chain: object | None
    first: object | None = None  # CPU chain that forbids end-of-generation for the first token
    backend: bool = False
    owned: list[object] = field(default_factory=list)  # freed when the request ends

    @property
    def name(self) -> str:
        return "numpy argmax" if self.chain is None else chain_name(self.chain)


class Samplers:
    """The sampler chains of the loaded context: the one attached to it (a device chain lives
    as long as its settings stay the same) and the replaced ones not yet safe to free.

    One per session (``LlamaSession.samplers``); every generation path asks it for a request's
    :class:`Sampling` and gives it back with :meth:`release`.
    """

    def __init__(self) -> None:
        self._attached: _Attached | None = None
        self._retired: list[object] = []
        self._gpu: bool | None = None

    def choose(
        self, m: Model, s: SamplingParams, mode: str, no_empty: bool, prompt: Sequence[int] = ()
    ) -> Sampling:
        """Pick the sampling path; attach (or keep) the device chain before the prefill. The
        chains have seen ``prompt`` (:func:`feed_prompt`)."""
        if mode not in SAMPLER_MODES:
            raise RequestError(ErrorKind.PARAMS, f"sampler must be one of {', '.join(SAMPLER_MODES)}")
        self.free_retired(m)
        if mode == "auto":
            if self._gpu is None:
                self._gpu = gpu_present()
            # Plain greedy reads the logits row llama.cpp copies anyway: a numpy argmax after
            # the sync beat the device argmax (H100, 128k vocabulary: 330.1 vs 328.5 t/s, both
            # >= 99 % of llama-bench); any other chain is faster on the device (316.6 vs 305.8).
            plain_greedy = s.greedy and not penalty_on(s)
            mode = "backend" if self._gpu and not plain_greedy else "cpu"
        if mode.startswith("backend"):
            spec = chain_spec(s, device=True, topk1=mode == "backend-topk1")
            att = self._attached
            if att is not None and att.model is m and att.spec == spec:
                LL.llama_sampler_reset(att.chain)  # reseed dist, clear the penalty history
                feed_prompt(att.chain, s, prompt)
                return Sampling(s, att.chain, backend=True)
            chain = build_chain(spec, m.n_vocab)
            if LL.llama_set_sampler(m.ctx, 0, chain):
                self._retire()
                self._attached = _Attached(m, spec, chain)
                feed_prompt(chain, s, prompt)
                return Sampling(s, chain, backend=True)
            LL.llama_sampler_free(chain)  # not offloadable here (tensor split): CPU after all
            self._retire()
        self.detach(m)
        forbid = tuple(m.eog_ids) if no_empty else ()
        first = build_chain(chain_spec(s, device=False, forbid=forbid), m.n_vocab) if forbid else None
        feed_prompt(first, s, prompt)
        owned = [first] if first else []
        if mode == "cpu" and s.greedy and not penalty_on(s):
            return Sampling(s, None, first, owned=owned)
        chain = build_chain(chain_spec(s, device=False), m.n_vocab)
        feed_prompt(chain, s, prompt)
        return Sampling(s, chain, first, owned=owned + [chain])

    def detach(self, m: Model) -> None:
        if self._attached is not None and self._attached.model is m:
            LL.llama_set_sampler(m.ctx, 0, None)
            self._retire()

    def _retire(self) -> None:
        """Keep a replaced chain until a decode has rebuilt the graph without it.

        A chain whose context was freed (a new model) is retired too: the context's graph
        referenced it, so it is only freed once the next context exists.
        """
        if self._attached is not None:
            self._retired.append(self._attached.chain)
            self._attached = None

    def free_retired(self, m: Model | None) -> None:
        """Free replaced chains; ``m`` is the loaded model (a chain attached to another is gone)."""
        if self._attached is not None and self._attached.model is not m:
            self._retire()  # its context is gone
        for chain in self._retired:
            LL.llama_sampler_free(chain)
        self._retired = []

    def release(self, sp: Sampling) -> None:
        for chain in sp.owned:
            LL.llama_sampler_free(chain)
        sp.owned.clear()

    def first_token(
        self, m: Model, sp: Sampling, tokens: list[int], no_empty: bool, cancel: threading.Event
    ) -> int:
        """The token after the prompt; with ``no_empty`` never an end-of-generation token."""
        ctx = m.ctx
        if sp.first is not None:
            tok = LL.llama_sampler_sample(sp.first, ctx, -1)
            if sp.chain is not None:
                LL.llama_sampler_accept(sp.chain, tok)
            return tok
        tok = LL.llama_sampler_sample(sp.chain, ctx, -1) if sp.chain else argmax_of(m)()
        if not (no_empty and sp.backend and tok in set(m.eog_ids)):
            return tok
        alt = without_eog(m, sp.params, -1)
        if alt is not None:
            LL.llama_sampler_reset(sp.chain)
            feed_prompt(sp.chain, sp.params, tokens)
            LL.llama_sampler_accept(sp.chain, alt)
            return alt
        return self._cpu_first_token(m, sp, tokens, cancel)

    def _cpu_first_token(self, m: Model, sp: Sampling, tokens: list[int], cancel: threading.Event) -> int:
        """Rare: every candidate the device kept ends the reply. Decode the last prompt token
        again without the device chain and sample on the CPU with end-of-generation forbidden;
        the rest of this request samples on the CPU, the next one attaches a fresh chain."""
        self.detach(m)
        last = len(tokens) - 1
        if m.truncate(last):
            m.prefill(tokens[last:], last, cancel)
        else:  # recurrent state cannot roll back one token (truncate cleared everything)
            m.prefill(tokens, 0, cancel)
        sp.chain = build_chain(chain_spec(sp.params, device=False), m.n_vocab)
        sp.first = build_chain(chain_spec(sp.params, device=False, forbid=tuple(m.eog_ids)), m.n_vocab)
        feed_prompt(sp.chain, sp.params, tokens)
        feed_prompt(sp.first, sp.params, tokens)
        sp.owned += [sp.chain, sp.first]
        sp.backend = False
        return self.first_token(m, sp, tokens, True, cancel)
