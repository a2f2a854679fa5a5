"""The arithmetic of the KV precision check: KL divergence, top-1 agreement, first divergence.

Pure numpy, no llama.cpp: the child computes the numbers with it, and tests check the math on
their own. Logits arrive as float32 rows of n_vocab (up to 262k for Gemma), so every O(n_vocab)
step is vectorised and done in float64 in blocks of rows, which keeps both the rounding error
(KL of close distributions is a difference of nearly equal sums) and the peak memory small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: Rows per float64 block: 8 x 262,144 x 8 bytes = 16 MiB per temporary.
_ROWS_PER_BLOCK = 8


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, shifted by the row maximum so exp() cannot overflow."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    shifted = x - m
    out: np.ndarray = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return out


def kl_divergence(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """KL(ref || cand) of the next-token distributions, one value per row (nats).

    Tokens the reference gives probability 0 contribute nothing; a token the reference can emit
    but the candidate rules out gives +inf, and NaN logits (an overflowed cache) give +inf too:
    such a cache is broken, not slightly worse.
    """
    ref = np.atleast_2d(np.asarray(ref_logits))
    cand = np.atleast_2d(np.asarray(cand_logits))
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {cand.shape}")
    out = np.empty(ref.shape[0], dtype=np.float64)
    for start in range(0, ref.shape[0], _ROWS_PER_BLOCK):
        lp = log_softmax(ref[start : start + _ROWS_PER_BLOCK])
        lq = log_softmax(cand[start : start + _ROWS_PER_BLOCK])
        p = np.exp(lp)
        with np.errstate(invalid="ignore"):
            terms = np.where(p > 0.0, p * (lp - lq), 0.0)
        kl = np.sum(terms, axis=-1)
        kl = np.where(np.isnan(kl), np.inf, kl)
        out[start : start + len(kl)] = np.maximum(kl, 0.0)  # rounding can dip a hair below 0
    return out


def top1_matches(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """Per row: does the candidate's most likely token equal the reference's?"""
    ref = np.atleast_2d(np.asarray(ref_logits))
    cand = np.atleast_2d(np.asarray(cand_logits))
    same: np.ndarray = np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)
    return same


def first_divergence(reference: Sequence[int], candidate: Sequence[int]) -> int | None:
    """Index of the first token where the two greedy continuations differ, or None.

    A candidate that stopped early differs at the first position it did not produce.
    """
    for i, tok in enumerate(reference):
        if i >= len(candidate) or candidate[i] != tok:
            return i
    return None


@dataclass(frozen=True)
class PromptScore:
    """What one prompt says about a candidate cache."""

    n_prompt_tokens: int
    n_positions: int  # teacher-forced positions compared (the reference continuation's length)
    kl_sum: float
    max_kl: float
    top1_hits: int
    first_divergence: int | None
    reference_text: str = ""
    candidate_text: str = ""

    @property
    def mean_kl(self) -> float:
        return self.kl_sum / self.n_positions if self.n_positions else 0.0

    @property
    def top1_agreement(self) -> float:
        return self.top1_hits / self.n_positions if self.n_positions else 1.0

    def to_dict(self) -> dict[str, object]:
        return {
            "n_prompt_tokens": self.n_prompt_tokens,
            "n_positions": self.n_positions,
            "mean_kl": self.mean_kl,
            "max_kl": self.max_kl,
            "top1_agreement": self.top1_agreement,
            "first_divergence": self.first_divergence,
            "reference_text": self.reference_text,
            "candidate_text": self.candidate_text,
        }


def score_prompt(
    ref_logits: np.ndarray,
    cand_logits: np.ndarray,
    reference: Sequence[int],
    candidate: Sequence[int],
    n_prompt_tokens: int,
    reference_text: str = "",
    candidate_text: str = "",
) -> PromptScore:
    """Score one prompt from its teacher-forced logits and the two greedy continuations."""
    kl = kl_divergence(ref_logits, cand_logits)
    return PromptScore(
        n_prompt_tokens=n_prompt_tokens,
        n_positions=int(kl.shape[0]),
        kl_sum=float(np.sum(kl)),
        max_kl=float(np.max(kl)) if kl.size else 0.0,
        top1_hits=int(np.count_nonzero(top1_matches(ref_logits, cand_logits))),
        first_divergence=first_divergence(reference, candidate),
        reference_text=reference_text,
        candidate_text=candidate_text,
    )


@dataclass(frozen=True)
class Summary:
    """Totals over all prompts; KL and agreement are means over every compared position."""

    mean_kl: float
    max_kl: float
    top1_agreement: float
    first_divergence: list[int | None]
    n_positions: int


def summarize(scores: Iterable[PromptScore]) -> Summary:
    items = list(scores)
    n = sum(s.n_positions for s in items)
    kl_sum = sum(s.kl_sum for s in items)
    return Summary(
        mean_kl=kl_sum / n if n else 0.0,
        max_kl=max((s.max_kl for s in items), default=0.0),
        top1_agreement=sum(s.top1_hits for s in items) / n if n else 1.0,
        first_divergence=[s.first_divergence for s in items],
        n_positions=n,
    )


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity: a broken cache's KL is reported as null."""
    return x if math.isfinite(x) else None
