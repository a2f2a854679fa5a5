"""The candidate cut on the device (engine.child.device_cut, ``KVDECK_DEVICE_CUT=1``).

The device keeps, of each sequence's output row, every token of the k chunks of 64 with the
highest maxima and the last, short chunk; the request's own CPU chain, which starts with top-k,
samples from those. The k best tokens must always be among them, with their own logits, so a
seeded reply is the token-for-token reply of the whole row. Here on llama.cpp's CPU backend,
which runs the same ggml operations the GPU would.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import pytest

from engine import protocol as P
from engine.child import device_cut_ops as D
from engine.core.memory_types import PlanSettings
from tests.helpers.burst import CHAT_PROMPTS, held_burst
from tests.helpers.runtime_host import running_host

compute = D.ggml_fn("ggml_graph_compute_with_ctx", ctypes.c_int, D._P, D._P, ctypes.c_int)
get_data = D.ggml_fn("ggml_get_data", D._P, D._P)


def _read(t: int, ctype: type, n: int) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(get_data(t), ctypes.POINTER(ctype)), (n,)).copy()


@pytest.mark.parametrize("n", [5259, 49152, 128256, 131079], ids=lambda n: f"vocab{n}")
@pytest.mark.parametrize("k", [1, 40, 100])
def test_the_cut_keeps_every_one_of_the_k_best_tokens_with_its_logit(n: int, k: int) -> None:
    rows = np.random.default_rng(n + k).standard_normal((4, n)).astype(np.float32) * 3
    rows[1, : n // 2] -= 50  # the best all in the second half
    rows[2, 64 * 7 : 64 * 7 + k] += 40  # the best all in one chunk, and the next
    rows[3, -(n % 64 or 64) :] += 40  # the best in the last, short chunk
    for row in rows:
        ctx = D.ggml_init(D._InitParams(64 * 1024 * 1024, None, False))
        try:
            t = D.new_tensor_1d(ctx, D._F32, n)
            ctypes.memmove(get_data(t), row.ctypes.data, row.nbytes)
            vals, ids = D.cut(ctx, t, None, k)
            if 2 * k * D.CHUNK > n:  # nothing worth cutting: the row stays whole
                assert ids is None and vals == t
                continue
            assert ids is not None
            gf = D.new_graph(ctx)
            D.build_forward_expand(gf, vals)
            D.build_forward_expand(gf, ids)
            assert compute(ctx, gf, 1) == 0
            m = D.nelements(vals)
            got, tokens = _read(vals, ctypes.c_float, m), _read(ids, ctypes.c_int32, m)
        finally:
            D.ggml_free(ctx)
        assert m == D.CHUNK * k + n % D.CHUNK
        assert len(set(tokens.tolist())) == m and np.array_equal(got, row[tokens])
        assert set(np.argsort(-row)[:k].tolist()) <= set(tokens.tolist())


@pytest.mark.parametrize("n", [49152, 128256, 131079], ids=lambda n: f"vocab{n}")
def test_every_row_of_a_step_is_cut_at_once_to_its_k_best_tokens(n: int) -> None:
    """engine.child.device_cut_ops.cut_rows: the step's logits [n_vocab, rows] in a dozen
    operations, whatever the number of rows; each row comes back as its k best, with their own
    logits (as llama.cpp hands each sequence a view of its row, the view names the rows)."""
    k, rng = 42, np.random.default_rng(n)
    rows = rng.standard_normal((5, n)).astype(np.float32) * 3
    rows[1, : n // 2] -= 50  # the best all in the second half
    rows[2, 64 * 7 : 64 * 7 + k] += 40  # the best all in one chunk, and the next
    rows[3, -(n % 64 or 64) :] += 40  # the best in the last, short chunk
    ctx = D.ggml_init(D._InitParams(256 * 1024 * 1024, None, False))
    try:
        t = D.new_tensor_2d(ctx, D._F32, n, len(rows))
        ctypes.memmove(get_data(t), rows.ctypes.data, rows.nbytes)
        assert D.row_of(D.view_1d(ctx, t, n, 3 * 4 * n)) == (t, 3)
        vals, ids = D.cut_rows(ctx, t, k)
        gf = D.new_graph(ctx)
        D.build_forward_expand(gf, vals)
        D.build_forward_expand(gf, ids)
        assert compute(ctx, gf, 2) == 0
        got = _read(vals, ctypes.c_float, k * len(rows)).reshape(len(rows), k)
        tokens = _read(ids, ctypes.c_int32, k * len(rows)).reshape(len(rows), k)
    finally:
        D.ggml_free(ctx)
    for row, g, tok in zip(rows, got, tokens):
        assert set(tok.tolist()) == set(np.argsort(-row)[:k].tolist())
        assert np.array_equal(g, row[tok])


def test_only_a_whole_row_of_a_two_dimensional_logits_tensor_is_read_as_a_row() -> None:
    ctx = D.ggml_init(D._InitParams(1 << 16, None, True))
    try:
        t = D.new_tensor_2d(ctx, D._F32, 1000, 3)
        assert D.row_of(D.view_1d(ctx, t, 1000, 4000)) == (t, 1)
        assert D.row_of(D.view_1d(ctx, t, 999, 4000)) is None  # part of a row
        assert D.row_of(D.view_1d(ctx, t, 1000, 4004)) is None  # astride two rows
        assert D.row_of(D.new_tensor_1d(ctx, D._F32, 1000)) is None  # not a view
    finally:
        D.ggml_free(ctx)


def _burst(host, sampling: dict) -> list[list[int]]:
    def build(prompt: str) -> Callable[[int], P.GenerateRequest]:
        return lambda i: P.GenerateRequest(id=i, prompt=prompt, max_tokens=24, sampling=sampling, serve=True)

    _, done, _ = held_burst(host, [build(p) for p in CHAT_PROMPTS])
    return [d.tokens if isinstance(d, P.Done) else [] for d in done]


@pytest.mark.slow
def test_seeded_replies_are_the_same_with_the_rows_cut_on_the_device(smollm2_path, monkeypatch) -> None:
    """SmolLM2's 49,152 tokens; every row of a step cut at once. ``early``: each step launched
    as soon as the one before is sampled (engine.child.batch), which a GPU does, so the rows are
    read before the next decode overwrites them. ``auto`` (the default) cuts only where the
    logits are on a GPU: here nothing is cut. Greedy replies keep the cut too (their token is the
    greatest logit, which the device keeps), so a sequence switching between the two does not
    rebuild its graphs."""
    seeded = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7}
    params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))
    replies, greedy, cut_rows, followed = {}, {}, {}, {}
    for mode, cut, early in (
        ("whole", "0", "0"),
        ("auto", "auto", "0"),
        ("cut", "1", "0"),
        ("early", "1", "1"),
    ):
        monkeypatch.setenv("KVDECK_DEVICE_CUT", cut)
        monkeypatch.setenv("KVDECK_EARLY_LAUNCH", early)
        slots: list[P.Slots] = []
        with running_host(params, on_event=slots.append) as (h, _):
            replies[mode] = _burst(h, seeded)
            greedy[mode] = _burst(h, {"temperature": 0})  # the same sequences, the cut kept
        last = [s for s in slots if isinstance(s, P.Slots)][-1]
        cut_rows[mode], followed[mode] = last.cut_rows, last.followed
    assert replies["cut"] == replies["whole"] == replies["early"] == replies["auto"] and all(replies["cut"])
    assert greedy["cut"] == greedy["whole"] == greedy["early"] == greedy["auto"] and all(greedy["cut"])
    assert cut_rows["whole"] == cut_rows["auto"] == 0
    past_first = sum(len(t) - 1 for t in replies["cut"] + greedy["cut"])
    assert min(cut_rows["cut"], cut_rows["early"]) >= past_first > 2 * 3 * 16  # every such row
    assert followed["early"] > 0


@pytest.mark.slow
def test_greedy_and_sampled_replies_take_turns_on_a_sequence_under_one_cut(smollm2_path, monkeypatch) -> None:
    """Six replies on three sequences in one batch run, seeded ones first and greedy ones after
    them on the same sequences: each sequence's cut is attached once (attaching rebuilds the
    graphs), and every reply is the one whole rows give."""
    seeded = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 5}
    params = P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=512 * 3, n_seq_max=3))
    got, attached = {}, {}
    for cut in ("0", "1"):
        monkeypatch.setenv("KVDECK_DEVICE_CUT", cut)
        slots: list[P.Slots] = []
        with running_host(params, on_event=slots.append) as (h, _):

            def build(prompt: str, sampling: dict) -> Callable[[int], P.GenerateRequest]:
                return lambda i: P.GenerateRequest(
                    id=i, prompt=prompt, max_tokens=16, sampling=sampling, serve=True
                )

            builds = [build(p, seeded) for p in CHAT_PROMPTS] + [
                build(p, {"temperature": 0}) for p in CHAT_PROMPTS
            ]
            _, done, _ = held_burst(h, builds)
        got[cut] = [d.tokens if isinstance(d, P.Done) else [] for d in done]
        attached[cut] = [s for s in slots if isinstance(s, P.Slots)][-1].cut_attached
    assert got["1"] == got["0"] and all(got["1"])
    assert attached == {"0": 0, "1": 3}


def test_the_cpu_backend_is_no_gpu_for_the_cut() -> None:
    """``auto`` cuts only where the logits are on a GPU of this machine (not the CPU, not an RPC
    server's device, whose rows would each come back in a network round trip)."""
    by_type = D.ggml_fn("ggml_backend_dev_by_type", D._P, ctypes.c_int)
    buft_of = D.ggml_fn("ggml_backend_dev_buffer_type", D._P, D._P)
    cpu = by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    assert cpu and D.dev_name(cpu) and not D.on_gpu(buft_of(cpu))
