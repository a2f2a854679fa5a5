"""Read a model's vocabulary with llama.cpp itself (vocab-only load: no weights). Child side."""

from __future__ import annotations

import os

import llama_cpp.llama_cpp as LL

from engine.child.errors import ErrorKind, RequestError
from engine.plan.pairing import SPEC_VOCAB_CHECK_START_TOKEN_ID, Check, VocabFacts, vocab_checks


def vocab_facts(path: str) -> VocabFacts:
    mp = LL.llama_model_default_params()
    mp.vocab_only = True
    mp.n_gpu_layers = 0
    model = LL.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise RequestError(ErrorKind.MODEL, f"could not read the vocabulary of {os.path.basename(path)}")
    try:
        vocab = LL.llama_model_get_vocab(model)
        n = int(LL.llama_vocab_n_tokens(vocab))
        texts = [LL.llama_vocab_get_text(vocab, i) or b"" for i in range(SPEC_VOCAB_CHECK_START_TOKEN_ID, n)]
        return VocabFacts(
            vocab_type=int(LL.llama_vocab_type(vocab)),
            n_vocab=n,
            add_bos=bool(LL.llama_vocab_get_add_bos(vocab)),
            add_eos=bool(LL.llama_vocab_get_add_eos(vocab)),
            bos=int(LL.llama_vocab_bos(vocab)),
            eos=int(LL.llama_vocab_eos(vocab)),
            texts=texts,
        )
    finally:
        LL.llama_model_free(model)


def pair_checks(target: str, draft: str) -> list[Check]:
    return vocab_checks(vocab_facts(target), vocab_facts(draft))
