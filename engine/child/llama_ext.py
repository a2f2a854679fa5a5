"""llama.cpp's staging API for self-drafting (src/llama-ext.h), through llama-cpp-python's
``llama_cpp.llama_cpp_ext``.

llama-ext.h declares these functions outside ``extern "C"``, so libllama exports them under
C++-mangled names. llama-cpp-python 0.3.36 binds the five we use in ``llama_cpp/llama_cpp_ext.py``,
with the argument and result types of llama-ext.h, trying the plain, Itanium (Linux, macOS) and
MSVC (Windows) names in turn; using it rather than our own lookup covers Windows too. That module
calls itself non-public, and it raises at import when no name of a function is exported (another
library build): :func:`ext` turns that, and a missing C-API piece, into one sentence
(``MISSING``) that switches self-drafting off instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import llama_cpp.llama_cpp as LL

#: The C API pieces self-drafting needs besides llama-ext.h's (present in 0.3.36).
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
    """The bound functions, each ``llama_<field>`` of llama-ext.h (see there for what each does)."""

    set_embeddings_nextn: Any
    set_nextn_layer_offset: Any
    get_embeddings_nextn: Any
    get_embeddings_nextn_ith: Any
    get_ctx_other: Any


_CACHE: list[Ext | str] = []


def _bind() -> Ext | str:
    try:
        import llama_cpp.llama_cpp_ext as X
    except (ImportError, AttributeError) as exc:  # AttributeError: "None of the ... symbols were found"
        return MISSING.format(names=str(exc))
    missing = [name for name in _C_API if not hasattr(LL, name)]
    if missing:
        return MISSING.format(names=", ".join(missing))
    return Ext(**{f.name: getattr(X, "llama_" + f.name) for f in fields(Ext)})


def ext() -> Ext | str:
    """The bound staging API, or the sentence saying why self-drafting is off (checked once)."""
    if not _CACHE:
        _CACHE.append(_bind())
    return _CACHE[0]
