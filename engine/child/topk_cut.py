"""Sampling rows whose chain starts with top-k (or that are greedy) from only the tokens that can
be among the k best, in native threads (engine/child/rowsample.c, built as ``_rowsample``).

Why: ``llama_sampler_sample`` writes the whole logits row into the chain's candidate array (12
bytes a token: 1.5 MB at a 128k vocabulary, src/llama-sampler.cpp) before top-k throws all but
k of them away (16 rows on 16 threads: 1.8 ms a step on the H200's host, 2026-12-05). The
native pass reads each row once, keeping each 64-token chunk's maximum; every token that
reaches the k-th largest of those maxima is a candidate (at least k tokens reach it, so the k
best do), and the candidates go, in vocabulary order as llama.cpp writes them, to the request's
own chain: its top-k keeps the same k tokens, and every sampler after top-k only ever sees
those k, so the token and the chain's state (the dist sampler's generator, the penalties'
history) are llama.cpp's. Short of exact ties among the k best: llama.cpp's partial sort is not
stable, so equal logits may come out in another order from a shorter array, and the dist
sampler, which picks by position, may then name the other one. A row without a chain takes its
first greatest logit, as llama.cpp's greedy sampler does.

The module is built by the install (setup.py); where it could not be (no C compiler), ``NATIVE``
is None and every row takes llama.cpp's own path, only slower.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence

import llama_cpp.llama_cpp as LL
import numpy as np

try:
    from engine.child import _rowsample
except ImportError:  # built without a C compiler: llama.cpp's own path for every row
    _rowsample = None  # type: ignore[assignment]

#: One chunk of the native pass (CHUNK in rowsample.c): with k beyond a 2*CHUNK-th of the
#: vocabulary the threshold keeps most of the row, and llama.cpp's own path is as good.
CHUNK = 64


def _address(fn: object) -> int:
    return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)  # type: ignore[arg-type]


_APPLY = _address(LL._lib.llama_sampler_apply)
_ACCEPT = _address(LL._lib.llama_sampler_accept)


def _layout_matches() -> bool:
    """The C side's candidate structs have llama_cpp's (and so llama.h's) layout."""
    arr = LL.llama_token_data_array
    fields = {f[0]: getattr(arr, f[0]).offset for f in arr._fields_}
    return tuple(_rowsample.layout()) == (
        ctypes.sizeof(LL.llama_token_data),
        ctypes.sizeof(arr),
        fields["selected"],
        fields["sorted"],
    )


if _rowsample is not None and not _layout_matches():  # llama_cpp's structs moved: follow them
    raise ImportError("engine.child._rowsample does not match llama_cpp's llama_token_data_array")

#: The native module, None where the install could not build it.
NATIVE = _rowsample
if NATIVE is not None and os.environ.get("KVDECK_ROW_PASS"):  # for measuring: "portable" or "avx"
    try:
        NATIVE.row_pass(os.environ["KVDECK_ROW_PASS"])
    except ValueError as exc:  # a name this CPU has no pass for: the best one stays
        logging.getLogger(__name__).warning("KVDECK_ROW_PASS ignored: %s", exc)


def worth_cutting(k: int, n: int) -> bool:
    """Whether a row of ``n`` tokens is worth cutting to the chunks of its ``k`` best (here and
    on the device, engine.child.device_cut): beyond a 2*CHUNK-th of the row they keep half of
    it or more."""
    return 0 < k and k * 2 * CHUNK <= n


def leading_top_k(spec: tuple[tuple[object, ...], ...] | None) -> int:
    """k when a chain spec (engine.child.sampler.chain_spec) starts with top-k, else 0."""
    if spec and spec[0][0] == "top_k" and isinstance(spec[0][1], int) and spec[0][1] > 0:
        return spec[0][1]
    return 0


def chain_address(chain: object | None) -> int:
    """The ``llama_sampler *`` of a chain made by llama_cpp (0 for None: greedy)."""
    return 0 if chain is None else _address(chain)


class NativeRows:
    """Samples many rows in one native call; reuses its argument arrays between steps (so one
    NativeRows serves one thread; the native pool itself takes calls from several in turn)."""

    def __init__(self, n_vocab: int, n_threads: int) -> None:
        self.n_vocab = n_vocab
        self.n_threads = max(1, n_threads)
        self._grow(16)

    def _grow(self, n: int) -> None:
        self.rows = np.zeros(n, dtype=np.uint64)
        self.chains = np.zeros(n, dtype=np.uint64)
        self.ks = np.zeros(n, dtype=np.int32)
        self.out = np.zeros(n, dtype=np.int32)
        self.ids = np.zeros(n, dtype=np.uint64)
        self.counts = np.zeros(n, dtype=np.int64)
        # their addresses, once: ``.ctypes.data`` costs about a microsecond a read
        arrays = (self.rows, self.chains, self.ks, self.out, self.ids, self.counts)
        self.at = tuple(a.ctypes.data for a in arrays)

    def prewake(self, n_rows: int, delay_s: float, spin_s: float) -> None:
        """Have the threads for ``n_rows`` rows running in ``delay_s``, for ``spin_s`` at most."""
        n = min(n_rows, self.n_threads)
        if n > 1 and NATIVE is not None:
            _rowsample.prewake(n, int(max(0.0, delay_s) * 1e6), int(spin_s * 1e6))

    def usable(self, k: int) -> bool:
        return NATIVE is not None and worth_cutting(k, self.n_vocab)

    def sample(
        self,
        rows: Sequence[int],
        chains: Sequence[int],
        ks: Sequence[int],
        cut: Sequence[tuple[int, int]] | None = None,
        threads: int | None = None,
    ) -> list[int]:
        """One token per row: ``rows`` are the rows' logits addresses, ``chains`` their chain
        addresses (0: greedy), ``ks`` their chains' leading k. A chain has accepted its token;
        -1 leaves a row to llama.cpp's own path (a NaN in it). ``cut``: per row, (address of
        its candidates' ids, their number) where the device kept only those (engine.child.
        device_cut; the logits are theirs then), (0, 0) for a whole row. ``threads``: at most
        that many (default: this NativeRows's)."""
        n = len(rows)
        if n > len(self.out):
            self._grow(n)
        self.rows[:n], self.chains[:n], self.ks[:n] = rows, chains, ks
        if cut is not None:
            self.ids[:n], self.counts[:n] = [a for a, _ in cut], [c for _, c in cut]
        rows_at, chains_at, ks_at, out_at, ids_at, counts_at = self.at
        _rowsample.sample(
            rows_at,
            self.n_vocab,
            n,
            chains_at,
            ks_at,
            out_at,
            _APPLY,
            _ACCEPT,
            threads or self.n_threads,
            ids_at if cut is not None else 0,
            counts_at,
        )
        return self.out[:n].tolist()
