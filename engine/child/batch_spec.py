"""Drafting per sequence in the continuous batch (engine.child.batch), for ``kvdeck serve --mtp``.

The structure is llama.cpp's server (tools/server/server-context.cpp): every generating sequence
that may draft asks for up to k tokens, the drafter drafts for all of them in one pass per draft
position (``SelfDraft.draft_many``, like one ``common_speculative_draft`` over every drafting
slot), the target verifies every sequence's ``[last] + drafts`` in the step's one batch, the
drafter takes that whole batch (``SelfDraft.process_blocks``, llama.cpp's
``common_speculative_process``), and each sequence keeps its own accepted prefix and cuts its own
cells back (``llama_memory_seq_rm`` per sequence; a hybrid target rolls back through its n_rs_seq
snapshots, so k stays below n_rs_seq as in the single-sequence loop, ``spec_loop.verify_cap``).

The drafters here: the model's own MTP heads and a Gemma 4 assistant (they read the target's
hidden states), and prompt lookup (``engine.child.ngram``: an index per sequence over its
prompt and reply, as the single-sequence loop's, so a lookup reply is the same). A separate draft
model drafts per sequence too, from its own cache caught up on the reply's tokens
(engine.child.batch_draft_model). Every request drafts: each verify row is
sampled with the request's own chain, in order, exactly as
plain decoding samples it (llama.cpp's ``common_sampler_sample_and_accept_n``), and the drafts
are kept while they equal what was sampled. So the chain sees exactly the reply's tokens (its
penalties and grammar stay right), a seeded reply is the same token for token, and for a sampled
reply this is exact speculative sampling with a deterministic drafter (log-probabilities come from
the row each token was sampled from). The drafter takes every decode of the loop, drafting or
not, so that its cache follows the target's for every sequence (a sequence's catch-up is decoded
when it drafts, or every few dozen tokens when it does not: ``SelfDraft.process_blocks``); where
it did not (a reply made elsewhere), ``SelfDraft.truncate`` restarts it. The window's requests
come here too when its context has several sequences (engine.child.batch_intake.batch_wanted).
"""

from __future__ import annotations

from collections.abc import Callable

import llama_cpp.llama_cpp as LL

from engine.child.batch_backend import enabled as backend_sampling
from engine.child.batch_draft_model import ModelDrafts
from engine.child.batch_sample import RowSampler
from engine.child.draft import refuse_rollback_less
from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model
from engine.child.ngram import NgramIndex
from engine.child.selfdraft import Block, SelfDraft
from engine.child.slots import Slot, Waiting
from engine.child.spec_loop import verify_cap
from engine.protocol import GenerateRequest

#: The loaded self-drafters by the ``draft`` a request names: "mtp" (the model's own heads),
#: "model" (a Gemma 4 assistant loaded as the draft).
Drafters = dict[str, SelfDraft]


def drafters_of(session: object) -> Drafters:
    """The session's self-drafters: its MTP heads and a loaded assistant.

    A request drafts with the one it names (the draft picker's choice), as in the single-sequence
    loop (engine.child.speculative), never with whichever happens to be loaded. With llama.cpp
    0c1e570 at most one is: an assistant pairs only with a Gemma 4 target (assistant_rules), and
    Gemma 4's loader has no nextn layers (a gemma4 GGUF with nextn_predict_layers = 1 fails:
    "wrong number of tensors"); llama.cpp's server too has one drafting context, a draft file
    else an MTP context (common/speculative.cpp, common_speculative_init_result)."""
    out: Drafters = {}
    mtp = getattr(session, "mtp", None)
    if isinstance(mtp, SelfDraft):
        out["mtp"] = mtp
    draft = getattr(session, "draft", None)
    if isinstance(draft, SelfDraft):
        out["model"] = draft
    return out


def refusal(drafting: BatchDrafting, m: Model, req: GenerateRequest) -> str:
    """Why this request's drafting cannot run in the batch loop, in one sentence ('' when it can)."""
    if not req.draft:
        return ""
    sds = drafting.sds
    if req.draft == "model" and "model" not in sds:  # a separate draft model, or none
        if isinstance(drafting.dm, str):
            return drafting.dm
        if drafting.dm is None:
            return "no draft model is loaded: load one, or draft by n-gram lookup"
    if req.draft in ("lookup", "model") and backend_sampling():  # a device chain: one row a sequence
        return f"draft {req.draft!r} cannot run with backend sampling (KVDECK_BACKEND_SAMPLING=1)"
    sd = sds.get(req.draft)
    if sd is not None and sd.target is not m:
        return "the assistant was loaded for another target; load it again"
    if req.draft in ("lookup", "model") or sd is not None:
        try:  # a hybrid target without recurrent snapshots cannot cut a sequence back
            refuse_rollback_less(m.model, "target", m.ctx, req.draft_max)
        except RequestError as exc:
            return str(exc)
        return ""
    if req.draft == "mtp":
        return (
            "this model was not loaded with its MTP heads (settings.mtp, kvdeck --mtp), "
            "so it cannot draft for itself"
        )
    return f"draft must be one of model, lookup, mtp, not {req.draft!r}"


class BatchDrafting:
    """The drafters of one batch-loop run (the loaded self-drafters, prompt lookup for requests
    asking for it) and each drafting slot's rounds. Every loaded self-drafter takes every target
    decode and every rollback, whoever drafted, so that its cache follows the target's."""

    def __init__(self, sds: Drafters, m: Model, dm: ModelDrafts | str | None = None) -> None:
        self.sds, self.m = sds, m
        #: The separate draft model's drafter, or why it cannot draft for ``m`` (None: not loaded).
        self.dm = dm
        self.eog = frozenset(m.eog_ids)
        #: Per sequence: the lookup index of the request on it (its prompt and reply so far).
        self.lookups: dict[int, tuple[Waiting, NgramIndex]] = {}

    def can_move(self) -> bool:
        """Whether a sequence may move to another id (engine.child.prefix.SeqPrefixes.move): no
        drafter keeps a cache of its own per sequence."""
        return not self.sds and (self.dm is None or isinstance(self.dm, str))

    def moved(self, src: int, dst: int) -> None:
        if src in self.lookups:
            self.lookups[dst] = self.lookups.pop(src)

    def placed(self, seq: int, reuse: int) -> None:
        """A request starts on ``seq`` with its first ``reuse`` tokens already in the cache."""
        for sd in self.sds.values():
            sd.truncate(reuse, seq)

    def decoded(self, blocks: list[Block]) -> None:
        """The target just decoded ``blocks`` (while its hidden states are that batch's)."""
        for sd in self.sds.values():
            sd.process_blocks(blocks)

    def drafts(self, slots: list[Slot], room: int) -> dict[int, list[int]]:
        """Draft tokens per sequence for the generating ``slots`` that may draft, within ``room``
        batch rows beyond their own one token each."""
        asks: dict[str, dict[int, tuple[int, int, int]]] = {}
        by_model: dict[int, tuple[list[int], int, object]] = {}
        out: dict[int, list[int]] = {}
        for s in slots:
            r = s.w.req
            if not r.draft or s.w.cancel.is_set():
                continue
            lookup = r.draft == "lookup"
            if not s.k_max:
                s.k_max = s.k_now = verify_cap(self.m, self.sds.get(r.draft), r.draft_max)
                s.drafted_at, s.accepted_at = [0] * s.k_max, [0] * s.k_max
            k = min(s.k_now, s.max_tokens - len(s.out), s.n_ctx_seq - 1 - s.n_past, room)
            if k <= 0:
                continue
            if lookup:
                d = self._lookup(s).propose(k, self.eog)
                if d:
                    out[s.seq] = d
                    room -= len(d)
            elif r.draft in self.sds:
                asks.setdefault(r.draft, {})[s.seq] = (s.next_tok, s.n_past, k)
                room -= k
            else:  # a separate draft model (the reply's tokens: its last is next_tok)
                by_model[s.seq] = (s.w.prompt + s.out, k, s.w)
                room -= k
        for mode, its in asks.items():  # one pass per draft position for each drafter asked
            out.update(self.sds[mode].draft_many(its))
        if by_model and isinstance(self.dm, ModelDrafts):
            out.update(self.dm.draft_many(by_model))
        return out

    def _lookup(self, s: Slot) -> NgramIndex:
        """The lookup index of the request on ``s``: its prompt and every token it took (the last
        is ``next_tok``), as the single-sequence loop's index holds them."""
        have = self.lookups.get(s.seq)
        if have is None or have[0] is not s.w:
            have = self.lookups[s.seq] = (s.w, NgramIndex(s.w.prompt))
        idx = have[1]
        idx.extend(s.out[len(idx.tokens) - len(s.w.prompt) :])
        return idx

    def verify(
        self,
        sampler: RowSampler,
        s: Slot,
        row0: int,
        drafts: list[int],
        take: Callable[[Slot, int, int], None],
    ) -> None:
        """Accept the longest prefix of ``drafts`` the target agrees with (verify rows from
        ``row0``) plus the target's own next token; cut both caches of the sequence back."""
        a, nxt = 0, -1
        if not s.w.cancel.is_set():
            while True:
                nxt = sampler.one(s, row0 + a)  # what plain decoding samples (the chain accepts it)
                if a == len(drafts) or nxt != drafts[a]:
                    break
                a += 1
            for i in range(len(drafts)):
                s.drafted_at[i] += 1
                s.accepted_at[i] += i < a
            s.n_verify += 1
        before = len(s.out)
        for j, tok in enumerate(drafts[:a] + [nxt] if nxt >= 0 else []):
            take(s, row0 + j, tok)  # token j was sampled from verify row j
            if s.finish:
                break
        keep = min(a, len(s.out) - before)  # accepted drafts that became part of the reply
        n = s.n_past + 1 + keep
        if not LL.llama_memory_seq_rm(LL.llama_get_memory(self.m.ctx), s.seq, n, -1):
            raise RequestError(ErrorKind.RUNTIME, "the target's cache could not be rolled back")
        for sd in self.sds.values():  # each took this sequence's verify rows, whoever drafted
            sd.accept(a, s.seq)
            sd.truncate(n, s.seq)
        s.n_past = n
        if nxt < 0:
            s.next_tok = -1
        if a == len(drafts) == s.k_now:  # adaptive k, as the single-sequence loop
            s.k_now = min(s.k_max, s.k_now + 2)
        elif a < len(drafts):
            s.k_now = max(1, s.k_now - 1)
