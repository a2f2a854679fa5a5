"""Read a split GGUF (`Model-00001-of-00003.gguf` ...) as one model, the way llama.cpp does.

llama.cpp 0c1e570 (`src/llama-model-loader.cpp`, constructor) takes the metadata from the first
file only, and when its `split.count` (u16) is above 1 it requires `split.no` = 0 there, derives
the other parts' names from the first one's (`llama_split_prefix` / `llama_split_path` in
`src/llama.cpp`: `<prefix>-%05d-of-%05d.gguf`), opens every part, checks that part i says
`split.no` = i (a u16: `gguf_get_val_u16` asserts the type), gathers the tensors of all parts
(a name twice is an error) and finally compares their number with `split.tensors.count`.
Reading only part 1 would count a third of a three-part model's weights, so every reader of
a local model's tensor table goes through `read_model_header`.
"""

from __future__ import annotations

import os
from typing import Any

from engine.gguf.reader import Corrupt, TensorRow, read_dims_and_meta, read_header, read_tensor_dims

_U16, _I32 = 2, 5  # GGUF value type ids of uint16 and int32

Header = tuple[dict[str, Any], dict[str, int], list[TensorRow]]


def split_count(meta: dict[str, Any], types: dict[str, int]) -> int:
    """`split.count` as llama.cpp reads it (absent: 0; a type other than u16 is refused)."""
    if "split.count" not in meta:
        return 0
    if types.get("split.count") != _U16:
        raise Corrupt("is corrupt (split.count is not a 16-bit unsigned integer)")
    return int(meta["split.count"])


def part_paths(path: str, n_split: int) -> list[str]:
    """The paths of all parts, from the first part's path (llama_split_prefix/llama_split_path)."""
    postfix = f"-{1:05d}-of-{n_split:05d}.gguf"
    if len(path) <= len(postfix) or not path.endswith(postfix):
        raise Corrupt(
            f"says it is part 1 of a {n_split}-part model, but its name does not end in {postfix!r} "
            "(llama.cpp finds the other parts by that name)"
        )
    prefix = path[: -len(postfix)]
    return [f"{prefix}-{i + 1:05d}-of-{n_split:05d}.gguf" for i in range(n_split)]


def _split_no(meta: dict[str, Any], types: dict[str, int], name: str) -> int:
    if "split.no" not in meta:
        raise Corrupt(f"is a split model, but {name} lacks split.no")
    if types.get("split.no") != _U16:
        raise Corrupt(f"is a split model, but split.no of {name} is not a 16-bit unsigned integer")
    return int(meta["split.no"])


def read_model_header(path: str, size: int) -> tuple[Header, int]:
    """(metadata of part 1, its value types, the tensors of every part) and the bytes of all
    parts together. A plain GGUF is read as it is; `Corrupt` completes "<file> ..." for any
    split llama.cpp would refuse (a missing or mismatched part, a tensor twice, a wrong count)."""
    meta, types, tensors = read_header(path, size)
    n_split = split_count(meta, types)
    if n_split <= 1:
        return (meta, types, tensors), size
    if _split_no(meta, types, "it") != 0:
        raise Corrupt(
            f"is part {int(meta['split.no']) + 1} of a {n_split}-part model: open the first part "
            "(llama.cpp loads a split model from its first file)"
        )
    rows = list(tensors)
    total = size
    for idx, part in enumerate(part_paths(path, n_split)[1:], start=1):
        name = os.path.basename(part)
        try:
            part_size = os.stat(part).st_size
            pmeta, ptypes, ptensors = read_header(part, part_size)
        except FileNotFoundError:
            raise Corrupt(f"is part 1 of {n_split}, but part {idx + 1} ({name}) is missing") from None
        except Corrupt as exc:
            raise Corrupt(f"is part 1 of {n_split}, but part {idx + 1} ({name}) {exc}") from None
        if _split_no(pmeta, ptypes, name) != idx:
            raise Corrupt(f"is part 1 of {n_split}, but {name} says it is part {int(pmeta['split.no']) + 1}")
        rows += ptensors
        total += part_size
    seen: set[str] = set()
    for row in rows:
        if row[0] in seen:
            raise Corrupt(f"is corrupt (tensor {row[0]!r} appears in two parts)")
        seen.add(row[0])
    expected = meta.get("split.tensors.count")
    if types.get("split.tensors.count") != _I32:  # get_key into an int: an i32, required
        raise Corrupt("is a split model without a usable split.tensors.count")
    if expected != len(rows):
        raise Corrupt(f"is corrupt ({expected} tensors expected over its parts, {len(rows)} found)")
    return (meta, types, rows), total


def read_model_tensor_dims(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`read_tensor_dims` over every part of a model accepted by `read_model_header`. A copy of
    part 1's header that is not next to its parts (engine.hub's header cache of a remote split
    model, `<hash>.gguf-header`) gives its own tensors: the hub puts the parts' tables together
    itself and keeps no copy of the later parts' dimensions."""
    meta, types, dims = read_dims_and_meta(path)
    n_split = split_count(meta, types)
    if n_split > 1:
        try:
            parts = part_paths(path, n_split)[1:]
        except Corrupt:
            return dims
        for part in parts:
            if os.path.exists(part):
                dims.update(read_tensor_dims(part))
    return dims
