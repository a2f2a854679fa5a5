"""The "all keys" variant of a synthetic family: every key some architecture reads, written as 0,
except the keys this family's architecture reads (issue 18: some GGUF writers do this)."""

from __future__ import annotations

from typing import Any

from engine.gguf.arch_keys import all_arch_keys, reads
from tests.helpers.gguf_factory import FAMILIES


def zero_keys(name: str) -> dict[str, Any]:
    """Every key some architecture reads, as 0, except those this family's arch reads."""
    fam = FAMILIES[name]
    mine = reads(fam.arch)
    return {k: 0 for k in all_arch_keys() if f"{fam.arch}.{k}" not in mine and k not in fam.kv}
