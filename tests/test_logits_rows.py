"""Where a step's logits rows are (engine.child.batch_sample.RowSampler.all, ``dense``).

The batch loop reads a step of generated tokens only (every token an output row) as row i of the
context's logits for batch row i, with no llama_get_logits_ith per row. That holds because
llama.cpp puts its outputs back in batch order on the first logits access (output_reorder,
src/llama-context.cpp), even where a step was split into several ubatches: with a KV stream
per sequence, each run of consecutive sequence ids is a ubatch of its own.
"""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as LL
import pytest

LIB = ctypes.CDLL(LL._lib._name)
LIB.llama_get_logits.restype = ctypes.c_void_p
LIB.llama_get_logits.argtypes = [ctypes.c_void_p]
LIB.llama_get_logits_ith.restype = ctypes.c_void_p
LIB.llama_get_logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]


@pytest.fixture(scope="module")
def ctx(smollm2_path):
    mparams = LL.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = LL.llama_model_load_from_file(str(smollm2_path).encode(), mparams)
    cparams = LL.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 4 * 256, 64, 64, 4
    c = LL.llama_init_from_model(model, cparams)
    n_vocab = LL.llama_vocab_n_tokens(LL.llama_model_get_vocab(model))
    yield c, n_vocab
    LL.llama_free(c)
    LL.llama_model_free(model)


def decode(ctx: object, rows: list[tuple[int, int, int, bool]]) -> None:
    """One batch of (token, position, sequence, output) rows."""
    batch = LL.llama_batch_init(len(rows), 0, 1)
    try:
        for i, (tok, pos, seq, out) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.logits[i] = tok, pos, out
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
        batch.n_tokens = len(rows)
        assert LL.llama_decode(ctx, batch) == 0
    finally:
        LL.llama_batch_free(batch)


@pytest.mark.parametrize("seqs", [[0, 1, 2, 3], [3, 0, 2], [1, 3]], ids=["one-run", "out-of-order", "gap"])
def test_a_step_of_generated_tokens_has_batch_row_i_at_logits_row_i(ctx, seqs: list[int]) -> None:
    c, n_vocab = ctx
    mem = LL.llama_get_memory(c)
    LL.llama_memory_clear(mem, True)
    prompt = [1, 504, 3458, 282, 260]
    decode(c, [(tok, p, s, p == len(prompt) - 1) for s in seqs for p, tok in enumerate(prompt)])
    decode(c, [(600 + 7 * s, len(prompt), s, True) for s in seqs])  # one generated token each
    base = LIB.llama_get_logits(c)
    assert [base + i * 4 * n_vocab for i in range(len(seqs))] == [
        LIB.llama_get_logits_ith(c, i) for i in range(len(seqs))
    ]
    rows = [(ctypes.c_float * n_vocab).from_address(base + i * 4 * n_vocab) for i in range(len(seqs))]
    assert len({bytes(r) for r in rows}) == len(seqs)  # each sequence's own row
