"""Per-sequence prefix reuse for the batch loop (engine.child.batch).

What a sequence held when its request ended stays in the KV cache, with the token list it
holds. The next request goes to the free sequence sharing the longest prefix with its prompt
and prefills only the rest, so a long system prompt shared by many requests is prefilled once
per sequence, not once per request. A prefix counts when it is more than a tenth of the
prompt (a BOS token or a template's first line is not); on a tie the sequence holding least is
taken, so cached conversations survive for the requests that can use them. Requests admitted
together are placed together, each into the sequence holding its own conversation. In a shared
KV pool (unified cache) that runs full, the cells of free sequences are dropped first.

With a KV stream per sequence (no unified cache), keeping the busy sequences one run of ids
comes before any prefix: llama.cpp puts only consecutive sequence ids in one ubatch
(src/llama-batch.cpp, split_equal with ``sequential``, which src/llama-kv-cache.cpp asks for
with several streams), so busy sequences 0 and 3 make every step two graph computes, each
reading all the weights (on the 2-core CPU, 16 sequences with gaps: 97.8 against 32.2 ms a
step). A prefix saves its prefill once; a gap costs every step while it lasts. A gap that a
finished request leaves is closed by moving busy sequences down into free ones
(:func:`gap_moves`, :meth:`SeqPrefixes.move`, engine.child.batch), never over a
conversation's long cached prefix.

The lists live on the Model (sequence 0's is ``Model.cached``, the single-sequence loop's own
prefix cache; the others ``Model.seq_cached``), so they survive between runs of the batch loop
and are emptied with the cache by ``Model.clear``.
"""

from __future__ import annotations

from collections.abc import Iterable

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.model import Model


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def runs(ids: Iterable[int]) -> int:
    """How many runs of consecutive ids ``ids`` holds (one ubatch each, see above)."""
    s = sorted(set(ids))
    return sum(1 for k, x in enumerate(s) if k == 0 or x != s[k - 1] + 1)


def choose(
    free: list[int], busy: list[int], reuse: dict[int, int], held: dict[int, int], streams: bool, keep: int
) -> int:
    """The free sequence for a new request. Not one holding more than ``keep`` cached tokens the
    prompt does not start with (a conversation's next turn would prefill them again), where
    another is free; then the fewest runs of busy ids (with a stream per sequence); then the
    longest prefix reused; then the least held; then the lowest id."""

    def key(i: int) -> tuple[bool, int, int, int, int]:
        spoils = held[i] > keep and reuse[i] == 0
        return spoils, runs([*busy, i]) if streams else 0, -reuse[i], held[i], i

    return min(free, key=key)


#: A cached prefix counts for placement when it is more than this share of the prompt, as in
#: llama-server's slot choice (``--slot-prompt-similarity`` 0.1, tools/server/server-context.cpp
#: get_available_slot). Why: a BOS token or a template's first line, which every prompt shares,
#: sent each new request to the sequence that held it, overwriting the last conversation there,
#: where a free sequence holding less was as good.
SIMILAR = 0.1


def useful(reuse: int, n_prompt: int) -> int:
    """``reuse`` cached tokens of an ``n_prompt``-token prompt, or 0 when too few to count."""
    return reuse if reuse > SIMILAR * n_prompt else 0


def assign(chosen: list[int], reuse: list[dict[int, int]]) -> list[int]:
    """Which of the ``chosen`` sequences each request takes (``reuse``: per request, the useful
    cached tokens in each): the largest reuse first, each request and sequence once; the
    requests left over take the sequences left over, in their order."""
    out = [-1] * len(reuse)
    left = list(chosen)
    pairs = [(r[i], j, chosen.index(i), i) for j, r in enumerate(reuse) for i in chosen if r[i] > 0]
    for _, j, _, i in sorted(pairs, key=lambda t: (-t[0], t[1], t[2])):
        if out[j] < 0 and i in left:
            out[j] = i
            left.remove(i)
    for j in range(len(out)):
        if out[j] < 0:
            out[j] = left.pop(0)
    return out


def arrange(
    free: list[int],
    busy: list[int],
    kept: dict[int, list[int]],
    prompts: list[list[int]],
    streams: bool,
    keep: int,
) -> list[tuple[int, int]]:
    """(sequence, its cached prefix of the prompt) for each of ``prompts``, admitted together
    into ``free`` sequences holding ``kept``: first which sequences, one at a time by
    :func:`choose` as for a request that could take the best prefix any of them has there; then
    who goes where (:func:`assign`). Why both steps: placed one by one, the second of two
    requests whose own conversations sit in sequences 0 and 1 went next to wherever the first
    one went, to keep one run of ids, and took the other's sequence."""
    raw = [{i: common_prefix(kept[i], p) for i in free} for p in prompts]
    use = [{i: useful(r[i], len(p)) for i in free} for r, p in zip(raw, prompts)]
    held = {i: len(kept[i]) for i in free}
    best = {i: max(u[i] for u in use) for i in free}  # the best prefix any of them has in i
    left, taken, chosen = list(free), list(busy), []
    for _ in prompts:
        i = choose(left, taken, best, held, streams, keep)
        chosen.append(i)
        left.remove(i)
        taken.append(i)
    return [(i, r[i]) for i, r in zip(assign(chosen, use), raw)]


def gap_moves(busy: list[int], free: list[int], held: dict[int, int], keep: int) -> list[tuple[int, int]]:
    """Moves (from, to) that leave the busy ids in the fewest runs: the highest busy sequence
    into the lowest free one below it that holds at most ``keep`` cached tokens (a longer
    prefix is a conversation's next turn), planned to the end; only the moves up to the
    fewest runs are kept, and none unless that is fewer runs than now. A vacated sequence
    holds nothing and may take a later move."""
    now, into = sorted(busy), {i for i in free if held[i] <= keep}
    plan: list[tuple[int, int]] = []
    best, best_at = runs(now), 0
    while runs(now) > 1:
        src = now[-1]
        dst = min((i for i in into if i < src), default=None)
        if dst is None:
            break
        into.discard(dst)
        into.add(src)
        now = sorted([*now[:-1], dst])
        plan.append((src, dst))
        if runs(now) < best:
            best, best_at = runs(now), len(plan)
    return plan[:best_at]


class SeqPrefixes:
    def __init__(self, m: Model, n_seq: int, streams: bool, keep: int) -> None:
        self.m = m
        self.streams = streams  # a KV stream per sequence: keep the busy ones contiguous
        #: A cached prefix longer than this is a conversation's next turn: not given away to
        #: another request, nor overwritten by a move (about one ubatch to prefill again).
        self.keep = keep
        self.kept: list[list[int]] = [
            m.cached if i == 0 else m.seq_cached.setdefault(i, []) for i in range(n_seq)
        ]

    def place(self, free: list[int], busy: list[int], prompts: list[list[int]]) -> list[tuple[int, int]]:
        """(sequence, prompt tokens already in it) for each of the new requests ``prompts``,
        admitted together (:func:`arrange`); each sequence keeps exactly the reused cells (at
        least one prompt token is left to decode, for its logits)."""
        kept = {i: self.kept[i] for i in free}
        placed = arrange(free, busy, kept, prompts, self.streams, self.keep)
        return [(i, self._keep(i, min(r, len(p) - 1))) for (i, r), p in zip(placed, prompts)]

    def move(self, src: int, dst: int) -> None:
        """Move what sequence ``src`` holds into the free sequence ``dst``: across streams
        llama.cpp copies the whole stream at the next decode (src/llama-kv-cache.cpp, seq_cp;
        256 MiB copied within the device for an 8B model's 2k-token stream, and the graph is
        reserved again). Only for caches whose ``seq_rm`` and ``seq_cp`` change cell metadata
        at once and copy data at the next decode: DeepSeek 4's compressed caches clear
        ``src`` at once (src/llama-kv-cache-dsv4.cpp), which is why hybrid models, the class
        llama.cpp puts it in, never move (engine.child.batch)."""
        mem = self.m.mem
        LL.llama_memory_seq_rm(mem, dst, -1, -1)
        LL.llama_memory_seq_cp(mem, src, dst, -1, -1)
        LL.llama_memory_seq_rm(mem, src, -1, -1)
        self.kept[dst][:] = self.kept[src]
        self.kept[src].clear()

    def _keep(self, seq: int, n: int) -> int:
        kept = self.kept[seq]
        if n < len(kept) or n == 0:
            if not LL.llama_memory_seq_rm(self.m.mem, seq, n, -1):  # recurrent: all or nothing
                LL.llama_memory_seq_rm(self.m.mem, seq, -1, -1)
                n = 0
            del kept[n:]
        return n

    def ended(self, seq: int, tokens: list[int], ok: bool) -> None:
        """A request left ``seq`` holding ``tokens`` (nothing trustworthy when not ``ok``)."""
        kept = self.kept[seq]
        kept[:] = tokens if ok else []
        if not ok:
            LL.llama_memory_seq_rm(self.m.mem, seq, -1, -1)

    def evict_idle(self, busy: list[bool]) -> bool:
        """Drop the cells of free sequences; False when there were none."""
        freed = False
        for i, kept in enumerate(self.kept):
            if not busy[i] and kept:
                LL.llama_memory_seq_rm(self.m.mem, i, -1, -1)
                kept.clear()
                freed = True
        return freed
