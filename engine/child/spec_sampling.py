"""The arithmetic of speculative decoding, on plain numpy arrays (no llama.cpp here).

Kept apart from the generation loop so the part that decides *which token comes out* can be
tested on synthetic distributions: the whole promise of speculative decoding is that the
output has exactly the target's distribution, and that is a property of these few functions.

* :func:`final_distribution` turns one row of logits into the distribution the plain sampler
  chain draws from (``engine.child.sampler.chain_spec``: repetition penalty, top-k, top-p,
  min-p, temperature, in llama.cpp's order), in float64 over the whole vocabulary. The target's p and the
  draft's q both come from it, so q is the draft's *final* distribution, as exact speculative
  sampling requires (llama.cpp's own examples compare against an argmax draft, which is not).
* :func:`accept_or_resample` is Leviathan et al. / Chen et al.: accept a drafted token d with
  probability min(1, p(d)/q(d)), otherwise draw from normalize(max(0, p - q)). A deterministic
  proposer (n-gram lookup) is the special case q = one-hot(d).
* :func:`greedy_token` is what plain greedy decoding picks, so greedy speculation can compare
  the verify rows with the drafts token for token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.core.sampling import SamplingParams


def _penalise(ids: np.ndarray, vals: np.ndarray, s: SamplingParams, history: Sequence[int]) -> None:
    """llama.cpp's repetition penalty (frequency and presence are 0 in KV Deck), in place:
    a positive logit is divided by the penalty, a negative one multiplied."""
    if s.repeat_penalty == 1.0 or not history or s.repeat_last_n <= 0:
        return
    recent = np.fromiter(history[-s.repeat_last_n :], dtype=np.int64)
    hit = np.isin(ids, recent)
    if hit.any():
        v = vals[hit]
        vals[hit] = np.where(v > 0, v / s.repeat_penalty, v * s.repeat_penalty)


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest entries (all ids when k is 0 or covers the vocabulary)."""
    if k <= 0 or k >= x.shape[0]:
        return np.arange(x.shape[0])
    return np.argpartition(-x, k - 1)[:k]


def _softmax(vals: np.ndarray) -> np.ndarray:
    e = np.exp(vals - vals.max())
    return e / e.sum()


def final_distribution(
    logits: np.ndarray,
    s: SamplingParams,
    history: Sequence[int] = (),
    n: int = 0,
    forbid: np.ndarray | None = None,
) -> np.ndarray:
    """The probabilities the plain chain samples from, over ``max(n, len(logits))`` ids.

    ``history`` holds the tokens generated so far (the penalty window's source); ``forbid``
    is a boolean mask of ids that must not come out (end-of-generation for the first token).
    """
    x = np.array(logits, dtype=np.float64)
    if forbid is not None:
        x = np.where(forbid[: x.shape[0]], -np.inf, x)
    _penalise(np.arange(x.shape[0]), x, s, history)  # before top-k, as llama.cpp's chain does
    ids = _top_k(x, s.top_k)
    vals = x[ids]
    keep = np.isfinite(vals)
    ids, vals = ids[keep], vals[keep]
    if s.top_p < 1.0 and ids.shape[0] > 1:
        order = np.argsort(-vals, kind="stable")
        cum = np.cumsum(_softmax(vals[order]))
        last = int(np.searchsorted(cum, s.top_p, side="left"))  # first index with cum >= p
        order = order[: min(last + 1, order.shape[0])]
        ids, vals = ids[order], vals[order]
    if s.min_p > 0.0 and ids.shape[0] > 1:
        keep = vals >= vals.max() + np.log(s.min_p)
        ids, vals = ids[keep], vals[keep]
    out = np.zeros(max(n, x.shape[0]), dtype=np.float64)
    out[ids] = _softmax(vals / max(s.temperature, 1e-6))
    return out


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from an unnormalised non-negative vector, touching only its support."""
    support = np.flatnonzero(p)
    cum = np.cumsum(p[support])
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return int(support[min(i, support.shape[0] - 1)])


def accept_or_resample(
    p: np.ndarray, q: np.ndarray | None, token: int, rng: np.random.Generator
) -> tuple[bool, int]:
    """Speculative sampling for one drafted ``token`` drawn from ``q`` (None: q = one-hot).

    Returns (accepted, token to emit). Accepted with probability min(1, p/q); on rejection the
    token comes from the residual normalize(max(0, p - q)). Together the emitted token is
    distributed exactly as p, whatever q is, as long as ``token`` really was drawn from q.
    """
    qt = 1.0 if q is None else float(q[token])
    pt = float(p[token]) if token < p.shape[0] else 0.0
    if qt > 0.0 and rng.random() * qt < pt:
        return True, token
    if q is None:
        residual = p.copy()
        if token < residual.shape[0]:
            residual[token] = 0.0
    else:
        m = min(p.shape[0], q.shape[0])
        residual = np.maximum(p[:m] - q[:m], 0.0)
    if not residual.sum() > 0.0:  # p == q up to rounding: the rejection had probability ~0
        return False, sample(p, rng)
    return False, sample(residual, rng)


def greedy_token(
    logits: np.ndarray, s: SamplingParams, history: Sequence[int] = (), forbid: np.ndarray | None = None
) -> int:
    """What plain greedy decoding picks from this row (numpy argmax: first of equal maxima)."""
    x = logits
    if forbid is not None:
        x = np.where(forbid[: x.shape[0]], -np.inf, x)
    if s.repeat_penalty == 1.0 or not history:
        return int(np.argmax(x))
    vals = np.array(x, dtype=np.float32)  # llama.cpp penalises in float32, the whole row
    _penalise(np.arange(vals.shape[0]), vals, s, history)
    return int(np.argmax(vals))
