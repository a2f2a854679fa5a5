"""Model-free drafting by prompt lookup: if the last few tokens appeared before, guess that what
followed them then follows them again.

Chat replies quote the prompt (code being edited, names, lists) and repeat themselves, so a
lookup in the token history costs nothing and is often right. The index maps every n-gram of
length 1..3 to the position right after its latest occurrence, updated as tokens arrive, so a
proposal is a dictionary lookup instead of a scan of the whole conversation per step.
"""

from __future__ import annotations

from collections.abc import Iterable

NGRAM_MIN = 1
NGRAM_MAX = 3


class NgramIndex:
    """Token history plus, per n-gram length, n-gram -> index of the token that followed it."""

    def __init__(self, tokens: Iterable[int] = (), n_min: int = NGRAM_MIN, n_max: int = NGRAM_MAX) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.tokens: list[int] = []
        self._next: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(n_min, n_max + 1)}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        toks = self.tokens
        for tok in tokens:
            j = len(toks)  # index of the token being added: it follows the n-grams ending at j-1
            for n, table in self._next.items():
                if j >= n:
                    table[tuple(toks[j - n : j])] = j
            toks.append(int(tok))

    def propose(self, n_draft: int, stop: frozenset[int] = frozenset()) -> list[int]:
        """Up to ``n_draft`` tokens that followed the longest suffix (3, then 2, then 1 tokens)
        matched earlier in the history, ending after the first token in ``stop`` (end of
        generation: nothing follows it); [] when nothing matches."""
        toks = self.tokens
        if n_draft <= 0:
            return []
        for n in range(self.n_max, self.n_min - 1, -1):
            if len(toks) <= n:
                continue
            j = self._next[n].get(tuple(toks[-n:]))
            if j is not None:
                drafts = toks[j : j + n_draft]
                for i, tok in enumerate(drafts):
                    if tok in stop:
                        return drafts[: i + 1]
                return drafts
        return []
