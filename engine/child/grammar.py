"""Constrained sampling and log-probabilities for the batch loop (engine.child.batch).

Grammar: a request may carry GBNF text or a JSON schema. The schema is converted here, in the
child, with llama-cpp-python's own converter (``llama_cpp.llama_grammar``: the only package
allowed to import llama_cpp is this one), and becomes llama.cpp's grammar sampler, placed FIRST
in the request's chain so every later sampler (top-k, penalties, temperature, greedy) only
ever sees tokens the grammar allows. A schema the converter cannot handle, or GBNF llama.cpp
cannot parse, is refused as a parameter error (the API answers 400).

Log-probabilities: the log-softmax of the model's raw logits row at that position, i.e. the
distribution the sampler chain received before any sampler (temperature, top-k/p, penalties,
grammar) changed it. That is what OpenAI documents ("the log probability of this token") and
what llama-server reports with ``post_sampling_probs`` off; it is the same for every sampling
setting, so it can be compared across requests.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from typing import Any

import llama_cpp.llama_cpp as LL
import numpy as np

from engine.child.errors import ErrorKind, RequestError

MAX_GRAMMAR_CHARS = 200_000
MAX_TOP_LOGPROBS = 20


def gbnf_for(grammar: str, json_schema: str) -> str:
    """The GBNF text of a request ('' when it is unconstrained)."""
    if grammar:
        return grammar
    if not json_schema:
        return ""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        schema = json.loads(json_schema)
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema must be an object")
        text = json_schema_to_gbnf(json.dumps(schema))
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds for schemas it cannot handle
        raise RequestError(
            ErrorKind.PARAMS,
            f"the JSON schema cannot be used to constrain output: {type(exc).__name__}: {exc}",
        ) from None
    # llama-cpp-python's string character rule lets raw control characters (a newline, a tab)
    # into JSON strings, which no JSON parser accepts; llama.cpp's own converter excludes them.
    return re.sub(
        r'^char ::= \[\^"\\\\\]', lambda _: 'char ::= [^"\\\\\\x7F\\x00-\\x1F]', text, flags=re.MULTILINE
    )


def grammar_sampler(vocab: object, gbnf: str) -> object:
    """llama.cpp's grammar sampler for ``gbnf``; a grammar it cannot parse is a PARAMS error."""
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise RequestError(ErrorKind.PARAMS, "the grammar is too large")
    smpl = LL.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not smpl:
        raise RequestError(
            ErrorKind.PARAMS,
            "the grammar (or the JSON schema converted to one) could not be parsed by llama.cpp",
        )
    return smpl


def prepend(sampler: object, chain: object | None) -> object:
    """A new chain: ``sampler`` then the samplers of ``chain`` (greedy when ``chain`` is None).

    The old chain's samplers move into the new one (llama.cpp chains own their samplers, so
    they are removed from the old chain first, which is then freed empty)."""
    out = LL.llama_sampler_chain_init(LL.llama_sampler_chain_default_params())
    LL.llama_sampler_chain_add(out, sampler)
    if chain is None:
        LL.llama_sampler_chain_add(out, LL.llama_sampler_init_greedy())
        return out
    while LL.llama_sampler_chain_n(chain) > 0:
        LL.llama_sampler_chain_add(out, LL.llama_sampler_chain_remove(chain, 0))
    LL.llama_sampler_free(chain)
    return out


def logprob_entry(row: np.ndarray, tok: int, k: int, text_of: Any) -> dict[str, Any]:
    """{token, logprob, top: [[token, logprob], ...]} for the sampled token of one logits row."""
    row = row.astype(np.float64, copy=False)
    peak = float(row.max())
    lse = peak + math.log(float(np.exp(row - peak).sum()))
    entry: dict[str, Any] = {"id": int(tok), "token": text_of(tok), "logprob": float(row[tok]) - lse}
    k = max(0, min(int(k), MAX_TOP_LOGPROBS))
    if k:
        top = np.argpartition(row, -k)[-k:]
        top = top[np.argsort(row[top])[::-1]]
        entry["top"] = [[int(t), text_of(int(t)), float(row[t]) - lse] for t in top]
    else:
        entry["top"] = []
    return entry


def logits_row(lib: ctypes.CDLL, ctx: object, i: int, n_vocab: int) -> np.ndarray:
    addr = lib.llama_get_logits_ith(ctx, i)
    return np.ctypeslib.as_array((ctypes.c_float * n_vocab).from_address(addr))
