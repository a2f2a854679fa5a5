"""The llama_batch of one batch-loop step (engine.child.batch): which rows go in, in what order.

One token per generating sequence first (and its drafts), then prompt chunks, oldest request
first, in what is left of n_batch: a long prompt never makes the generating sequences wait. The
rows are then laid out in sequence order, because with a KV stream per sequence llama.cpp puts
only consecutive sequence ids, in batch order, in one ubatch (engine.child.prefix): a prompt in
the sequence between two generating ones then shares their ubatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.slots import Slot


@dataclass
class StepRows:
    """What one step's batch holds."""

    n: int = 0  # tokens
    rows: list[tuple[int, Slot]] = field(default_factory=list)  # output rows: (batch index, slot)
    fed: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, prompt tokens; 0: generated)
    blocks: list[tuple[int, list[int], int]] = field(
        default_factory=list
    )  # (sequence, tokens, first position)
    checks: list[tuple[int, Slot, list[int]]] = field(default_factory=list)  # drafts: verify rows from index

    def per_seq(self) -> list[tuple[int, int]]:
        """(sequence, tokens it feeds), in sequence order."""
        return sorted(
            [(s.seq, max(k, 1)) for s, k in self.fed] + [(s.seq, 1 + len(d)) for _, s, d in self.checks]
        )


@dataclass
class Launch:
    """A step put on the device (engine.child.batch.BatchLoop._launch): its rows, whether it
    holds generated tokens only, whether the last step's text is settled while it runs,
    llama_decode's code, when it was called and when the call returned."""

    st: StepRows
    gen_only: bool
    overlap: bool
    rc: int
    t0: float
    t_call: float


class BatchRows:
    """One llama_batch for the whole run, written in place each step."""

    def __init__(self, n_batch: int) -> None:
        self.n_batch = n_batch
        self.batch = LL.llama_batch_init(n_batch, 0, 1)
        b = self.batch
        for i in range(n_batch):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
        self.row_seq = [0] * n_batch
        self.tok_a = np.ctypeslib.as_array(b.token, (n_batch,))
        self.pos_a = np.ctypeslib.as_array(b.pos, (n_batch,))
        self.out_a = np.ctypeslib.as_array(b.logits, (n_batch,))

    def free(self) -> None:
        LL.llama_batch_free(self.batch)

    def _point(self, n: int, k: int, seq: int) -> None:
        """Point rows n..n+k at ``seq``; only rows whose sequence changed are written."""
        b, row_seq = self.batch, self.row_seq
        for r in range(n, n + k):
            if row_seq[r] != seq:
                b.seq_id[r][0] = seq
                row_seq[r] = seq

    def compose(self, active: Sequence[Slot], drafts: Mapping[int, list[int]]) -> StepRows:
        """Write the step of ``active`` (with ``drafts`` per generating sequence) into the batch."""
        tok_a, pos_a, out_a = self.tok_a, self.pos_a, self.out_a
        gen = [s for s in active if s.next_tok >= 0]
        budget = self.n_batch - sum(1 + len(drafts.get(s.seq) or ()) for s in gen)
        chunk: dict[int, int] = {}
        for s in sorted(active, key=lambda s: s.w.t0):
            left = len(s.w.prompt) - s.n_fed
            if s.next_tok < 0 and left > 0 and budget > 0:
                chunk[s.seq] = k = min(left, budget)
                budget -= k
        st = StepRows()
        n = 0
        for s in sorted(active, key=lambda s: s.seq):
            if s.next_tok >= 0:
                d = drafts.get(s.seq)
                if d:
                    k = 1 + len(d)
                    tok_a[n : n + k] = [s.next_tok, *d]
                    pos_a[n : n + k] = np.arange(s.n_past, s.n_past + k, dtype=np.int32)
                    out_a[n : n + k] = 1
                    st.checks.append((n, s, d))
                else:  # the usual row: element writes, not slices (16 rows: 23 -> 4 µs a step here)
                    k = 1
                    tok_a[n], pos_a[n], out_a[n] = s.next_tok, s.n_past, 1
                    st.rows.append((n, s))
                    st.fed.append((s, 0))
                self._point(n, k, s.seq)
                st.blocks.append((s.seq, [s.next_tok, *(d or ())], s.n_past))
                n += k
            elif s.seq in chunk:
                k, left = chunk[s.seq], len(s.w.prompt) - s.n_fed
                tok_a[n : n + k] = s.w.prompt[s.n_fed : s.n_fed + k]
                pos_a[n : n + k] = np.arange(s.n_fed, s.n_fed + k, dtype=np.int32)
                out_a[n : n + k] = 0
                self._point(n, k, s.seq)
                if k == left:
                    out_a[n + k - 1] = 1
                    st.rows.append((n + k - 1, s))
                st.fed.append((s, k))
                st.blocks.append((s.seq, s.w.prompt[s.n_fed : s.n_fed + k], s.n_fed))
                n += k
        st.n = n
        self.batch.n_tokens = n
        return st

    def follow(self, st: StepRows, toks: Sequence[int]) -> StepRows:
        """The step after ``st`` (generated tokens only, every row going on) with ``toks``, the
        tokens its rows sampled: the same rows, sequences and output flags, one position on, so
        only the tokens and positions are written (a few µs, where compose takes tens), just
        before llama_decode. No ``blocks``: only self-drafters read them, and a loop with
        self-drafters never launches a step this way (engine.child.batch.BatchLoop._follows)."""
        n = st.n
        self.tok_a[:n] = toks
        self.pos_a[:n] += 1
        return StepRows(n, st.rows, st.fed)


def returns_at_once(
    n: int, fed: list[tuple[int, int]], before: list[tuple[int, int]] | None, streams: bool, n_ubatch: int
) -> bool:
    """Whether llama_decode returns at once on a GPU with a step of ``n`` tokens that feeds
    ``fed`` (its :meth:`StepRows.per_seq`), so that the step before's text and ended replies can
    go out while it runs (engine.child.batch); else they go first. ``before``: the last composed
    step's ``fed``.

    It returns before the device is done only with the last ubatch's compute queued: ggml's
    scheduler waits for each ubatch before the next one's inputs. One KV stream: ``split_simple``,
    n_ubatch tokens at a time. A stream per sequence: ``split_equal`` with sequential ids
    (src/llama-kv-cache.cpp:713): a ubatch holds as many tokens of every sequence in it, from one
    run of consecutive ids (src/llama-batch.cpp:569-633), so a step that feeds a prompt beside
    generated rows is two ubatches or more, and so is one whose sequences have a gap. On an H200
    the last token of a reply that ended before such a step reached its client 20 ms late
    (benchmarks/results/server-2026-12-05-h200-trace.json). And it returns at once only with the
    graph of the step before, reused (llm_graph_params::allow_reuse: the same tokens per
    sequence, the same sequences): building one took llama_decode 7-13 ms on the H100 before it
    returned (server-2026-12-05-h100-ubatch.json's step traces)."""
    if n > n_ubatch or fed != before:
        return False
    if not streams:
        return True
    return len({k for _, k in fed}) <= 1 and all(b[0] == a[0] + 1 for a, b in zip(fed, fed[1:]))


def goes_on(slots: Sequence[Slot], toks: Sequence[int], eog: frozenset[int]) -> bool:
    """Whether every one of ``slots`` feeds the token it just sampled on the next step, as far as
    that token alone can tell: not an end of generation, not its last token, not cancelled, and
    nothing read from its logits row after sampling (log-probabilities) or beside it (drafts).
    A stop string is told by the text, later: its row is then dropped after the step."""
    for s, tok in zip(slots, toks):
        req = s.w.req
        if tok in eog or len(s.out) + 1 >= s.max_tokens or s.w.cancel.is_set():
            return False
        if req.logprobs >= 0 or req.draft or s.device or s.finish:
            return False
    return True
