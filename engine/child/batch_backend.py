"""Backend (device) sampling in the continuous batch: one sampler chain attached per sequence.

Why: the batch loop samples every generating row on the CPU, and a chain that cuts the
vocabulary (top-k) first copies and sorts the whole row: 0.32-0.46 ms per row for a 128k
vocabulary on the H200 run (benchmarks/results/server-2026-12-04.json), which kept ``kvdeck
serve`` at 55-80 % of llama-batched-bench. llama.cpp can run a sequence's chain inside the
decode graph (``llama_set_sampler``, src/llama-context.cpp ``set_sampler``); the row's token
then comes back with the step and ``llama_sampler_sample`` only accepts it.

Off unless ``KVDECK_BACKEND_SAMPLING=1``. Which requests may use it: greedy, top-k, top-p,
min-p, temperature, dist and penalties (repeat, frequency, presence): every sampler our chains
use has ``backend_init`` (src/llama-sampler.cpp; penalties only while the context allows one
output row per sequence, our default). Grammars (no device implementation),
log-probabilities (they need the full row, which a device top-k does not copy back) and a loop
that drafts (several output rows of one sequence per step: decode returns -1 above
``n_outputs_max_per_seq``, src/llama-context.cpp ``decode``) keep the CPU chains.

Attaching makes the next decode re-reserve the scheduler (it synchronises and rebuilds the
graphs), so a sequence keeps its chain while the next request on it samples the same way;
``llama_sampler_reset`` reseeds ``dist`` (its seed, or a fresh random one). A chain may be
attached only once; a replaced chain is freed after the next decode, which rebuilt the graphs
without it (``sched_reserve`` drops the previous graph results). A chain attached to an idle
sequence draws no random numbers: only sequences with an output row in the step set inputs
(src/llama-graph.cpp ``llm_graph_input_sampling::set_input``), so a seeded reply does not
depend on what else was in the batch.

Known limits: a request with its own seed keeps the chain only when the next request on the
sequence has the same seed (``dist`` cannot be reseeded to another value), so distinct seeds
re-reserve once per request, as llama-server does with ``--backend-sampling``
(tools/server/server-context.cpp attaches per task). The first token's no-empty rule re-picks
from what the device kept (:func:`not_eog`); where it kept only end-of-generation tokens
(top_k(1) for greedy with penalties, a tight top-p) the reply ends empty, which the CPU chain's
logit bias prevents.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.child.model import Model
from engine.child.sampler import Spec, build_chain, feed_prompt, without_eog
from engine.child.slots import Waiting, sampler_specs
from engine.core.sampling import SamplingParams


def enabled() -> bool:
    """Whether the batch loop may sample on the device (``KVDECK_BACKEND_SAMPLING=1``)."""
    return os.environ.get("KVDECK_BACKEND_SAMPLING", "0") == "1"


def device_spec(s: SamplingParams, sampling: dict[str, Any], grammar: bool, logprobs: bool) -> Spec | None:
    """The device chain for a request (the CPU chain's layout, ``sampler_specs``), or None when
    it needs the CPU chain: a grammar has no device implementation, and log-probabilities need
    the whole row, which a device top-k does not copy back."""
    if grammar or logprobs:
        return None
    main, _ = sampler_specs(s, sampling, (), False, device=True)
    return main or (("greedy",),)


class SeqChains:
    """The device chains attached to the batch context, one per sequence at most; ``build``
    makes a chain from a spec (default: engine.child.sampler.build_chain)."""

    def __init__(self, m: Model, build: Callable[[Any], object] | None = None) -> None:
        self.m = m
        self.build = build or (lambda spec: build_chain(spec, m.n_vocab))
        self.attached: dict[int, tuple[Spec, object]] = {}
        self.retired: list[object] = []

    def admit(self, seq: int, w: Waiting) -> object | None:
        """The device chain for request ``w`` on sequence ``seq``, or None for the CPU chains."""
        spec = device_spec(w.sampling, w.req.sampling, w.grammar is not None, w.req.logprobs >= 0)
        return self.use(seq, spec)

    def use(self, seq: int, spec: Spec | None) -> object | None:
        """The chain sequence ``seq`` samples with on the device (reset for a new request), or
        None: then nothing is attached to it and its row comes back as plain logits."""
        have = self.attached.get(seq)
        if spec is not None and have is not None and have[0] == spec:
            LL.llama_sampler_reset(have[1])
            return have[1]
        self.drop(seq)
        if spec is None:
            return None
        chain = self.build(spec)
        if not LL.llama_set_sampler(self.m.ctx, seq, chain):  # not offloadable (tensor split)
            LL.llama_sampler_free(chain)
            return None
        self.attached[seq] = (spec, chain)
        return chain

    def drop(self, seq: int) -> None:
        have = self.attached.pop(seq, None)
        if have is not None:
            LL.llama_set_sampler(self.m.ctx, seq, None)
            self.retired.append(have[1])

    def decoded(self) -> None:
        """After a decode: the graphs no longer reference replaced chains."""
        for chain in self.retired:
            LL.llama_sampler_free(chain)
        self.retired = []

    def close(self) -> None:
        """Detach everything (the single-sequence loop owns sequence 0's chain); the next decode
        re-reserves before it computes anything, so the chains can go now."""
        for seq in list(self.attached):
            self.drop(seq)
        self.decoded()


def not_eog(m: Model, chain: Any, s: SamplingParams, i: int, tok: int, prompt: list[int]) -> int:
    """A reply's first token must not end it: pick again from what the device kept for row
    ``i``. When it kept nothing else (a cut that left only end-of-generation tokens) the reply
    ends empty, which the CPU chain's logit bias would have prevented."""
    alt = without_eog(m, s, i)
    if alt is None:
        return tok
    LL.llama_sampler_reset(chain)
    feed_prompt(chain, s, prompt)
    LL.llama_sampler_accept(chain, alt)
    return alt
