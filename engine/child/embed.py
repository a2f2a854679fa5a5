"""Detokenising and pooled embeddings, for the API server's /detokenize and /v1/embeddings.

Embeddings come only from models whose GGUF metadata declares a pooling (``<arch>.pooling_type``:
mean, cls, last): llama.cpp then pools the sequence's hidden states itself. A chat model
declares none, and mean-pooling its hidden states would return numbers no client should
mistake for a trained embedding, so it is refused in words (the API answers 400).

Runs on the child's main thread between generations: the batch loop hands an EmbedRequest
back to the main loop (engine.child.batch stops admission), so sequence 0 is free here. What it
held is dropped first, and its prefix-cache list with it.
"""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as LL
import numpy as np

from engine import protocol as P
from engine.child.errors import ErrorKind, RequestError
from engine.child.model import Model

POOLING = {
    LL.LLAMA_POOLING_TYPE_MEAN: "mean",
    LL.LLAMA_POOLING_TYPE_CLS: "cls",
    LL.LLAMA_POOLING_TYPE_LAST: "last",
    4: "rank",
}


def detokenize(m: Model, tokens: list[int]) -> str:
    bad = [t for t in tokens if not 0 <= t < m.n_vocab]
    if bad:
        raise RequestError(
            ErrorKind.PARAMS, f"token {bad[0]} is not in this model's vocabulary (0..{m.n_vocab - 1})"
        )
    if not tokens:
        return ""
    arr = (LL.llama_token * len(tokens))(*tokens)
    cap = 16 * len(tokens) + 64
    buf = ctypes.create_string_buffer(cap)
    n = LL.llama_detokenize(m.vocab, arr, len(tokens), buf, cap, False, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = LL.llama_detokenize(m.vocab, arr, len(tokens), buf, -n, False, True)
    return buf.raw[: max(0, n)].decode("utf-8", "replace")


def embed(m: Model, req: P.EmbedRequest) -> P.Embeddings:
    pooling = int(LL.llama_pooling_type(m.ctx))
    if pooling not in POOLING:
        raise RequestError(
            ErrorKind.PARAMS,
            "this model cannot make embeddings: its GGUF metadata "
            "declares no pooling (it is not an embedding model)",
        )
    vectors: list[list[float]] = []
    n_total = 0
    n_embd = int(LL.llama_model_n_embd(m.model))
    LL.llama_set_embeddings(m.ctx, True)
    try:
        for text in req.texts:
            tokens = m.tokenize(text)
            if not tokens:
                raise RequestError(ErrorKind.PARAMS, "an input to embed is empty")
            if len(tokens) > min(m.n_batch, m.n_ctx_seq):
                raise RequestError(
                    ErrorKind.CONTEXT,
                    f"an input is {len(tokens)} tokens long; at most "
                    f"{min(m.n_batch, m.n_ctx_seq)} fit one batch",
                )
            m.clear()
            tok_a, pos_a, out_a = m.views
            n = len(tokens)
            tok_a[:n] = tokens
            pos_a[:n] = np.arange(n, dtype=np.int32)
            out_a[:n] = 1
            m.batch.n_tokens = n
            m.check(LL.llama_decode(m.ctx, m.batch))
            ptr = LL.llama_get_embeddings_seq(m.ctx, 0)
            if not ptr:
                raise RequestError(ErrorKind.RUNTIME, "llama.cpp returned no pooled embedding")
            vec = np.ctypeslib.as_array(ptr, (n_embd,)).astype(np.float64)
            if req.normalize:
                norm = float(np.linalg.norm(vec))
                vec = vec / norm if norm > 0 else vec
            vectors.append(vec.tolist())
            n_total += n
    finally:
        m.clear()
        LL.llama_set_embeddings(m.ctx, False)
    return P.Embeddings(id=req.id, vectors=vectors, n_tokens=n_total, pooling=POOLING[pooling])
