"""Which metadata keys llama.cpp reads for an architecture, from the generated arch_table.

llama.cpp's loader asks, per architecture, for a fixed set of keys (`load_hparams` for all,
`load_arch_hparams` per class) and ignores every other key in the file. Some GGUF writers put
every known key into every file, mostly zero (`ssm.* = 0` on a llama, `kv_lora_rank = 0`,
`attention.sliding_window = 0` on an arch without SWA): the inspector must not see those either,
or it plans recurrent state, MLA or SWA caches llama.cpp never creates. `visible_metadata`
drops them; everything else in engine.gguf can then treat "present" exactly as llama.cpp does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from engine.gguf.arch_table import ARCH_LOADER, COMMON, COMMON_BY_ARCH, LOADER_READS, Read

__all__ = ["Read", "all_arch_keys", "known_arch", "reads", "visible_metadata"]


def known_arch(arch: str) -> bool:
    """llama.cpp 0c1e570 maps this name to a model class (`llama_model_mapping`); "clip" is a
    vision projector, never a language model, and is refused by the inspector separately."""
    return arch in ARCH_LOADER


@cache
def reads(arch: str) -> dict[str, Read]:
    """Every key llama.cpp's loader may read for `arch` (full GGUF key -> how it is read):
    the common keys, the arch-conditional common keys, then its loader's (inheritance resolved:
    mistral4 -> deepseek2). Conditional reads count as read. Empty for unknown archs."""
    if arch not in ARCH_LOADER:
        return {}
    loader = ARCH_LOADER[arch]
    merged: dict[str, Read] = {}
    for table in (COMMON, COMMON_BY_ARCH.get(arch, {}), LOADER_READS.get(loader, {}) if loader else {}):
        for fmt, read in table.items():
            merged.setdefault(fmt.replace("%s", arch), read)
    return merged


def visible_metadata(meta: dict[str, Any], arch: str) -> dict[str, Any]:
    """`meta` without the `<arch>.` keys llama.cpp does not read for this arch (other keys,
    general.*, tokenizer.* and other prefixes, are left alone: nothing reads them as hparams)."""
    wanted = reads(arch)
    prefix = arch + "."
    return {k: v for k, v in meta.items() if not k.startswith(prefix) or k in wanted}


def all_arch_keys() -> tuple[str, ...]:
    """Every `%s.`-prefixed key (suffix after the arch name) any architecture reads, sorted:
    the key list of a writer that puts every known key into every file."""
    keys = (
        set(COMMON)
        | {k for t in COMMON_BY_ARCH.values() for k in t}
        | {k for t in LOADER_READS.values() for k in t}
    )
    return tuple(sorted(k[3:] for k in keys if k.startswith("%s.")))
