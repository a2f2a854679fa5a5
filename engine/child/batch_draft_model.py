"""A separate draft model drafting per sequence in the batch loop (engine.child.batch_spec).

Why it can: the draft's context is made like the target's (engine.child.draft), with as many
sequences, so sequence i of the draft follows sequence i of the target. What a draft sequence
holds is known by its tokens alone (the same tokens at the same positions give the same cells),
so nothing follows the target's decodes: before a sequence drafts, its draft cache is cut back to
the longest common prefix with the reply's tokens (rejected drafts go there) and the rest is
decoded, which is the single-sequence loop's catch-up (``SpecRun._propose_model``) per
sequence. Then the drafting sequences draft together, one batch per draft position, greedily
(the batch loop verifies by sampling each row with the request's own chain and keeping drafts
while they equal it, which is exact for a deterministic drafter, as llama.cpp's server drafts).

Sequence 0's token list is ``Draft.cached``, the single-sequence loop's, so both agree on what
the draft holds there; the others live in ``Draft.seq_cached``.
"""

from __future__ import annotations

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.draft import Draft
from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model
from engine.child.spec_loop import common_from


class ModelDrafts:
    """Greedy drafts from a separate draft model, for several sequences at once."""

    def __init__(self, d: Draft, m: Model) -> None:
        self.d, self.m = d, m
        self.n_batch = int(LL.llama_n_batch(d.ctx))
        self.eog = frozenset(m.eog_ids)
        #: Per sequence: the request on it and how many of its tokens the draft is known to hold,
        #: so a step compares only what came since (not the whole conversation, every step).
        self.known: dict[int, tuple[object, int]] = {}

    def _kept(self, seq: int) -> list[int]:
        return self.d.cached if seq == 0 else self.d.seq_cached.setdefault(seq, [])

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One draft decode of (sequence, token, position, wants logits) rows."""
        b = self.d.batch
        for i, (seq, tok, pos, out) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        self.m.check(LL.llama_decode(self.d.ctx, b))

    def _best(self, row: int) -> int:
        logits = np.ctypeslib.as_array(LL.llama_get_logits_ith(self.d.ctx, row), shape=(self.d.n_vocab,))
        return int(logits.argmax())

    def _catch_up(self, seq: int, hist: list[int], owner: object) -> int:
        """Bring the draft's ``seq`` to ``hist`` (decoding what it lacks) and return its first
        draft token, from the last row (``owner``: the request, whose tokens only grow)."""
        kept = self._kept(seq)
        was, n_known = self.known.get(seq, (None, 0))
        start = min(n_known, len(kept), len(hist)) if was is owner else 0
        c = min(common_from(kept, hist, start), len(hist) - 1)  # the last one again, for its logits
        self.known[seq] = (owner, len(hist))  # the reply keeps these tokens
        if c < len(kept):
            if not LL.llama_memory_seq_rm(self.d.mem, seq, c, -1):
                raise RequestError(ErrorKind.RUNTIME, "the draft's cache could not be rolled back")
            del kept[c:]
        for start in range(c, len(hist), self.n_batch):
            chunk = hist[start : start + self.n_batch]
            last = start + len(chunk) == len(hist)
            self._decode([(seq, t, start + i, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
            kept.extend(chunk)
        return self._best(-1)

    def draft_many(self, asks: dict[int, tuple[list[int], int, object]]) -> dict[int, list[int]]:
        """Up to k greedy draft tokens per sequence: ``asks`` maps a sequence to (the reply's
        tokens so far, its last one not yet in the target; k; the request)."""
        out: dict[int, list[int]] = {}
        live: list[int] = []
        for seq, (hist, k, owner) in asks.items():
            tok = self._catch_up(seq, hist, owner)
            out[seq] = []
            if tok < self.m.n_vocab:  # only the draft has this id; the target cannot verify it
                out[seq].append(tok)
                if k > 1 and tok not in self.eog:
                    live.append(seq)
        step = 1
        while live:
            rows = [(seq, out[seq][-1], len(asks[seq][0]) + step - 1, True) for seq in live]
            self._decode(rows)
            still = []
            for j, seq in enumerate(live):
                self._kept(seq).append(out[seq][-1])
                tok = self._best(j)
                if tok >= self.m.n_vocab:
                    continue
                out[seq].append(tok)
                if len(out[seq]) < asks[seq][1] and tok not in self.eog:
                    still.append(seq)
            live, step = still, step + 1
        return {seq: toks for seq, toks in out.items() if toks}


def model_drafts(session: object, m: Model) -> ModelDrafts | str | None:
    """The loaded draft model's per-sequence drafter for target ``m``; the reason in one sentence
    when its context cannot be made for it (a plain reply must not fail for that); None when no
    separate draft model is loaded."""
    from engine.child.draft import draft_for

    d = getattr(session, "draft", None)
    if not isinstance(d, Draft):
        return None
    try:
        return ModelDrafts(draft_for(session, m), m)  # type: ignore[arg-type]
    except RequestError as exc:
        return str(exc)
