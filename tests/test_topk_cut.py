"""Sampling from the tokens that can be among the k best, in native threads
(engine.child.topk_cut over engine/child/rowsample.c), picks what llama.cpp's chain picks from
the whole row, and leaves the chain in the same state."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import llama_cpp.llama_cpp as LL
import numpy as np
import pytest

from benchmarks.row_sampling import llama_way as whole_row  # llama.cpp's way, the reference
from engine.child import _rowsample
from engine.child.sampler import build_chain
from engine.child.topk_cut import NativeRows, chain_address, leading_top_k

N_VOCAB = 131072


def chain(k: int, seed: int) -> object:
    """llama-server's default chain with top-k ``k``, built as the batch loop builds chains."""
    return build_chain(
        (("top_k", k), ("top_p", 0.95), ("min_p", 0.05), ("temp", 0.8), ("dist", seed)), N_VOCAB
    )


def native(rows: list[np.ndarray], chains: list[object], k: int, threads: int = 4) -> list[int]:
    """One native call over ``rows`` (one chain each; None: greedy)."""
    return NativeRows(len(rows[0]), threads).sample(
        [r.ctypes.data for r in rows], [chain_address(c) for c in chains], [k] * len(rows)
    )


def _passes() -> list[str]:
    """The row passes this CPU runs (rowsample.c picks the fastest at import)."""
    have = []
    was = _rowsample.row_pass()
    for name in ("portable", "avx"):
        try:
            _rowsample.row_pass(name)
            have.append(name)
        except ValueError:
            pass
    _rowsample.row_pass(was)
    return have


@pytest.fixture(params=_passes())
def row_pass(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each row pass in turn: they must read rows alike (maxima, NaNs, the short last chunk)."""
    was = _rowsample.row_pass(request.param)
    yield request.param
    _rowsample.row_pass(was)


def test_the_fastest_row_pass_this_cpu_has_is_used() -> None:
    assert _rowsample.row_pass() == _passes()[-1]
    with pytest.raises(ValueError):
        _rowsample.row_pass("no-such-pass")


@pytest.mark.parametrize("k", [1, 40, 200])
def test_the_cut_samples_the_same_tokens_as_the_whole_row(k: int, row_pass: str) -> None:
    rng = np.random.default_rng(k)
    rows = [(rng.standard_normal(N_VOCAB) * s).astype(np.float32) for s in (0.5, 2.5, 8.0) for _ in range(20)]
    ours, theirs = chain(k, 11), chain(k, 11)
    try:
        assert NativeRows(N_VOCAB, 2).usable(k)
        assert [native([r], [ours], k)[0] for r in rows] == [whole_row(theirs, r) for r in rows]
    finally:
        LL.llama_sampler_free(ours)
        LL.llama_sampler_free(theirs)


def test_rows_the_device_cut_to_candidates_sample_as_the_whole_row() -> None:
    """engine.child.device_cut hands back, per row, the logits and ids of a shuffled superset of
    the k best (the tokens of the k best chunks); rows cut and whole share one native call."""
    k, rng = 40, np.random.default_rng(5)
    rows = [(rng.standard_normal(N_VOCAB) * 2.5).astype(np.float32) for _ in range(24)]
    kept = [rng.permutation(np.union1d(np.argsort(-r)[:k], rng.choice(N_VOCAB, 2600))) for r in rows]
    ids = [np.ascontiguousarray(c, dtype=np.int32) for c in kept]
    vals = [np.ascontiguousarray(r[c]) for r, c in zip(rows, kept)]
    ours, theirs = [chain(k, 3) for _ in rows], [chain(k, 3) for _ in rows]
    try:
        whole = [i % 3 == 0 for i in range(len(rows))]
        got = NativeRows(N_VOCAB, 4).sample(
            [(r if w else v).ctypes.data for r, v, w in zip(rows, vals, whole)],
            [chain_address(c) for c in ours],
            [k] * len(rows),
            [(0, 0) if w else (i.ctypes.data, len(i)) for i, w in zip(ids, whole)],
        )
        assert got == [whole_row(c, r) for c, r in zip(theirs, rows)]
    finally:
        for c in ours + theirs:
            LL.llama_sampler_free(c)


def test_rows_sampled_together_on_threads_match_rows_sampled_alone() -> None:
    """Sixteen requests, each its own chain and seed, in one call: each gets llama.cpp's token."""
    rng = np.random.default_rng(5)
    ours = [chain(40, seed) for seed in range(16)]
    theirs = [chain(40, seed) for seed in range(16)]
    try:
        for _ in range(8):
            rows = [(rng.standard_normal(N_VOCAB) * 3).astype(np.float32) for _ in range(16)]
            assert native(rows, ours, 40, threads=8) == [whole_row(c, r) for c, r in zip(theirs, rows)]
    finally:
        for c in ours + theirs:
            LL.llama_sampler_free(c)


def test_a_peaked_row_and_a_flat_tail_are_cut_exactly() -> None:
    """A model's row: a few high logits, the rest nearly tied far below."""
    row = np.full(N_VOCAB, -20.0, dtype=np.float32)
    row[[5, 70000, 131071]] = [3.0, 2.5, 2.9]
    ours, theirs = chain(40, 3), chain(40, 3)
    try:
        assert [native([row], [ours], 40)[0] for _ in range(30)] == [
            whole_row(theirs, row) for _ in range(30)
        ]
    finally:
        LL.llama_sampler_free(ours)
        LL.llama_sampler_free(theirs)


def test_the_k_best_side_by_side_in_one_stretch_of_the_row_are_all_kept() -> None:
    """The native pass reads the row in chunks: k best tokens that share a chunk, or straddle
    two, are still all candidates."""
    rng = np.random.default_rng(9)
    for start in (0, 30, 131072 - 100):
        row = rng.standard_normal(N_VOCAB).astype(np.float32)
        row[start : start + 100] += 10.0
        ours, theirs = chain(40, start), chain(40, start)
        try:
            assert [native([row], [ours], 40)[0] for _ in range(10)] == [
                whole_row(theirs, row) for _ in range(10)
            ]
        finally:
            LL.llama_sampler_free(ours)
            LL.llama_sampler_free(theirs)


def test_a_row_without_a_chain_takes_its_first_greatest_logit(row_pass: str) -> None:
    """llama.cpp's greedy sampler: the first of equal maxima, at any position (a vocabulary
    that is no multiple of the native pass's chunk too)."""
    rows = []
    for n, top in ((N_VOCAB, [7, 9000]), (49153, [49152]), (50, [3, 4])):
        row = np.zeros(n, dtype=np.float32)
        row[top] = 1.0
        rows.append(native([row], [None], 1)[0])
    assert rows == [7, 49152, 3]


def test_a_greedy_row_the_device_cut_takes_the_greatest_logit_and_the_lowest_id_of_equals() -> None:
    """The device keeps candidates in no order (engine.child.device_cut); llama.cpp's greedy
    sampler takes the first greatest of the vocabulary."""
    vals = np.array([0.5, 2.0, -1.0, 2.0, 1.5], dtype=np.float32)
    ids = np.array([900, 77, 5, 12, 3], dtype=np.int32)
    nan = vals.copy()
    nan[2] = np.nan
    got = NativeRows(N_VOCAB, 2).sample(
        [vals.ctypes.data, nan.ctypes.data], [0, 0], [1, 1], [(ids.ctypes.data, 5), (ids.ctypes.data, 5)]
    )
    assert got == [12, -1]


def test_a_chain_without_a_leading_k_is_left_to_llama_cpp() -> None:
    row = np.zeros(N_VOCAB, dtype=np.float32)
    c = chain(40, 1)
    try:
        assert native([row, row], [c, c], 0) == [-1, -1]
    finally:
        LL.llama_sampler_free(c)


@pytest.mark.parametrize("at", [0, 123, 64 * 7 + 63, N_VOCAB - 1])
def test_a_row_with_nan_is_left_to_llama_cpp(at: int, row_pass: str) -> None:
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[at] = np.nan
    c = chain(40, 1)
    try:
        assert native([row, np.zeros(N_VOCAB, dtype=np.float32)], [c, None], 40) == [-1, 0]
    finally:
        LL.llama_sampler_free(c)


def test_only_a_chain_that_starts_with_top_k_is_cut() -> None:
    assert leading_top_k((("top_k", 40), ("top_p", 0.95), ("temp", 0.8), ("dist", 1))) == 40
    assert leading_top_k((("logit_bias", (2,)), ("top_k", 40), ("dist", 1))) == 0
    assert leading_top_k((("greedy",),)) == 0
    assert leading_top_k(None) == 0
    assert not NativeRows(1000, 1).usable(400)  # k near the vocabulary: llama.cpp's own sort


def test_calls_from_two_threads_take_turns() -> None:
    """The native pool runs one call at a time; a second caller waits, and both get their rows."""
    rng = np.random.default_rng(2)
    blocks = [[rng.standard_normal(N_VOCAB).astype(np.float32) for _ in range(8)] for _ in range(2)]
    got: dict[int, list[int]] = {}

    def caller(b: int) -> None:
        rows = NativeRows(N_VOCAB, 4)
        for _ in range(20):
            got[b] = rows.sample([r.ctypes.data for r in blocks[b]], [0] * 8, [1] * 8)

    threads = [threading.Thread(target=caller, args=(b,)) for b in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {b: [int(r.argmax()) for r in blocks[b]] for b in range(2)}


def test_rows_sampled_while_the_workers_are_prewoken_are_all_sampled() -> None:
    """A step whose logits come before the prewoken workers were due to spin: the call still
    gets every row (the workers sleep in slices and take the job when they see it)."""
    rng = np.random.default_rng(4)
    rows = [rng.standard_normal(N_VOCAB).astype(np.float32) for _ in range(16)]
    sampler = NativeRows(N_VOCAB, 4)
    for delay_s in (0.0, 0.002, 1.0):
        sampler.prewake(16, delay_s, 0.002)
        got = sampler.sample([r.ctypes.data for r in rows], [0] * 16, [1] * 16)
        assert got == [int(r.argmax()) for r in rows]


def sample_on_new_threads(n: int, rows: list[np.ndarray]) -> tuple[int, list[list[int]]]:
    """Greedy ``rows`` sampled on each of ``n`` new threads, every one on its own thread alone
    (no pool): how many threads held buffers while all ``n`` were alive, and their tokens. The
    threads have been joined."""
    sampled = threading.Barrier(n + 1, timeout=60)
    may_end = threading.Event()
    got: list[list[int]] = []

    def caller() -> None:
        got.append(native(rows, [None] * len(rows), 1, threads=1))
        sampled.wait()
        may_end.wait()

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        sampled.wait()
        return _rowsample.live_buffers(), got
    finally:
        may_end.set()
        for t in threads:
            t.join()


def test_a_thread_that_sampled_frees_its_buffers_when_it_ends() -> None:
    """Every thread that samples keeps its buffers (a row's chunk maxima and candidates, up to
    ~3 MB) for its next rows; short-lived threads, as tests and benchmarks start them, leave
    none behind once they have ended."""
    rng = np.random.default_rng(6)
    rows = [rng.standard_normal(N_VOCAB).astype(np.float32) for _ in range(4)]
    before = _rowsample.live_buffers()
    for _ in range(4):
        alive, got = sample_on_new_threads(8, rows)
        assert alive == before + 8
        assert got == [[int(r.argmax()) for r in rows]] * 8
        # A thread frees them as it exits, which may come just after join() has returned.
        assert _rowsample.live_buffers(before, 60.0) == before


EXIT_WITH_PREWOKEN_WORKERS = """
import numpy as np
from engine.child.topk_cut import NativeRows
rows = [np.random.default_rng(i).standard_normal(4096).astype(np.float32) for i in range(16)]
sampler = NativeRows(4096, 4)
assert sampler.sample([r.ctypes.data for r in rows], [0] * 16, [1] * 16) == [int(r.argmax()) for r in rows]
sampler.prewake(16, 600.0, 600.0)  # the workers sleep ten minutes, then spin ten more
"""


def test_python_exits_at_once_while_the_pool_workers_wait_for_a_step() -> None:
    """At exit the pool's workers end and free their buffers: Python waits for them, and a
    worker woken ahead of a step that never comes ends too, without sleeping out its delay."""
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_PREWOKEN_WORKERS],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, "")
