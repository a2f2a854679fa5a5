"""llama.cpp's staging API for self-drafting (src/llama-ext.h), bound by hand.

Why by mangled name: llama-ext.h declares these functions outside ``extern "C"``, so libllama
exports them under C++-mangled names and llama-cpp-python binds none of them. The names are
stable for a given signature but they are not a C ABI, so :func:`ext` checks every one once at
start-up and returns None when any is missing: self-drafting is then switched off with one
sentence (``MISSING``) instead of crashing on a changed library.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as LL

_P = ctypes.c_void_p
_F = ctypes.POINTER(ctypes.c_float)

#: (attribute, mangled symbol, argtypes, restype), from llama-ext.h of llama.cpp 0c1e570.
_SYMBOLS: tuple[tuple[str, str, list[Any], Any], ...] = (
    (
        "set_embeddings_nextn",
        "_Z26llama_set_embeddings_nextnP13llama_contextbb",
        [_P, ctypes.c_bool, ctypes.c_bool],
        None,
    ),
    (
        "set_nextn_layer_offset",
        "_Z28llama_set_nextn_layer_offsetP13llama_contexti",
        [_P, ctypes.c_int32],
        None,
    ),
    ("get_embeddings_nextn", "_Z26llama_get_embeddings_nextnP13llama_context", [_P], _F),
    (
        "get_embeddings_nextn_ith",
        "_Z30llama_get_embeddings_nextn_ithP13llama_contexti",
        [_P, ctypes.c_int32],
        _F,
    ),
    ("get_ctx_other", "_Z19llama_get_ctx_otherP13llama_context", [_P], _P),
)
#: The C API pieces self-drafting needs besides the mangled ones (present in 0.3.36).
_C_API = (
    "llama_batch_ext_init",
    "llama_batch_ext_add_token",
    "llama_batch_ext_set_pos",
    "llama_batch_ext_set_embd_token",
    "llama_batch_ext_set_output_logits",
    "llama_process",
    "llama_model_n_layer_nextn",
    "llama_n_rs_seq",
    "LLAMA_CONTEXT_TYPE_MTP",
)
MISSING = (
    "self-drafting is not available: this llama.cpp library does not export the MTP functions "
    "KV Deck needs ({names}); drafting is off"
)


@dataclass(frozen=True)
class Ext:
    """The bound functions (see llama-ext.h for what each does)."""

    set_embeddings_nextn: Any
    set_nextn_layer_offset: Any
    get_embeddings_nextn: Any
    get_embeddings_nextn_ith: Any
    get_ctx_other: Any


_CACHE: list[Ext | str] = []


def ext() -> Ext | str:
    """The bound staging API, or the sentence saying why self-drafting is off (checked once)."""
    if not _CACHE:
        lib = LL._lib
        missing = [name for _a, name, _t, _r in _SYMBOLS if not hasattr(lib, name)]
        missing += [name for name in _C_API if not hasattr(LL, name)]
        if missing:
            _CACHE.append(MISSING.format(names=", ".join(missing)))
        else:
            fns = {}
            for attr, name, argtypes, restype in _SYMBOLS:
                f = getattr(lib, name)
                f.argtypes, f.restype = argtypes, restype
                fns[attr] = f
            _CACHE.append(Ext(**fns))
    return _CACHE[0]
