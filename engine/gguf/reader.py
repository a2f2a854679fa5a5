"""A bounds-checked reader of GGUF headers that refuses what llama.cpp's own parser refuses.

GGUF files come from the internet: every count, length, shape and offset in them may lie. This
reader walks the header with `struct` over an `mmap` (tensor data is never read) and applies the
checks of llama.cpp 0c1e570's `ggml/src/gguf.cpp: gguf_init_from_file_impl` (empty or duplicate
keys, `general.alignment` of type u32 and a power of two, tensor names of at most 63 bytes and
unique, at most 4 dimensions, element counts below 2^63, rows of whole blocks, tensor data laid
out back to back at aligned offsets) plus one of its own: everything must lie inside the file.
A file that passes here reaches llama.cpp's parser with nothing it would choke on, and a file
that fails gets a sentence instead of a log line from a child process.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

# GGUF value type id -> struct format (8 = string, 9 = array are handled separately).
_SCALAR_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRUCTS = {f: struct.Struct("<" + f) for f in _SCALAR_FMT.values()}
_MAX_ARRAY_KEEP = 65536  # longer numeric arrays (token scores) are only counted, like strings
_MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH and GGUF_MAX_ARRAY_ELEMENTS in gguf.cpp
_MAX_NAME = 63  # GGML_MAX_NAME - 1
_I64_MAX = 2**63 - 1
TEXT_KEYS = {
    "general.architecture",
    "general.name",
    "tokenizer.ggml.model",
    "tokenizer.chat_template",
}  # other string values are skipped and read as ""
TRUNCATED = "is truncated or corrupt (header runs past the end of the file)"

#: (name, ggml type name, n_elements, n_bytes, offset, ne0) of one tensor.
TensorRow = tuple[str, str, int, int, int, int]


class Corrupt(Exception):
    """The header is malformed; the message completes "<file> ..."."""


class Incomplete(Exception):
    """A header read from a prefix of the file (`read_header(..., data=prefix)`) needs more
    bytes than the prefix holds: `needed` of them, at least. Remote readers (range requests)
    fetch more and parse again; a local file never raises this."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"the header needs at least {needed} bytes")
        self.needed = needed


class Array(NamedTuple):
    """A metadata array; `items` is None for string arrays and very long numeric ones."""

    elem_type: int
    length: int
    items: tuple[Any, ...] | None


class _Cursor:
    """Bounds-checked little-endian reader over the mapped header."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.avail = min(size, len(buf))  # < size when only a prefix of the file is at hand

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise Corrupt(TRUNCATED)
        if self.pos + n > self.avail:
            raise Incomplete(self.pos + n)
        self.pos += n
        return self.pos - n

    def num(self, fmt: str) -> Any:
        packer = _STRUCTS[fmt]
        return packer.unpack_from(self.buf, self.take(packer.size))[0]

    def string(self, limit: int | None = None, decode: bool = True, errors: str = "replace") -> str:
        """Decode only what we use: a corrupt length can point at megabytes of weights.

        Keys and tensor names decode with ``surrogateescape`` so that two names differing only
        in invalid UTF-8 stay different, as they are to llama.cpp (which compares bytes)."""
        n = self.num("Q")
        if limit is not None and n > limit:
            raise Corrupt("is corrupt (implausibly long key or tensor name)")
        start = self.take(n)
        return self.buf[start : self.pos].decode("utf-8", errors=errors) if decode else ""

    def value(self, vtype: int, decode: bool) -> Any:
        if vtype in _SCALAR_FMT:
            return self.num(_SCALAR_FMT[vtype])
        if vtype not in (8, 9):
            raise Corrupt(f"is corrupt (unknown metadata value type {vtype})")
        return self.string(decode=decode) if vtype == 8 else self.array()

    def array(self) -> Array:
        elem, count = self.num("I"), self.num("Q")
        if count > _MAX_STRING:
            raise Corrupt("is corrupt (malformed metadata array)")
        if elem in _SCALAR_FMT:
            fmt = _SCALAR_FMT[elem]
            start = self.take(count * _STRUCTS[fmt].size)
            keep = count <= _MAX_ARRAY_KEEP
            return Array(elem, count, struct.unpack_from(f"<{count}{fmt}", self.buf, start) if keep else None)
        if elem != 8 or count * 8 > self.size - self.pos:  # llama.cpp rejects nested arrays
            raise Corrupt("is corrupt (malformed metadata array)")
        buf, pos, avail, unpack = self.buf, self.pos, self.avail, _STRUCTS["Q"].unpack_from
        for _ in range(count):  # hot loop: step over tokens/merges without decoding them
            if pos + 8 > avail:
                self.take(pos + 8 - self.pos)  # raises Corrupt, or Incomplete for a prefix
            pos += 8 + unpack(buf, pos)[0]
        self.take(pos - self.pos)
        return Array(elem, count, None)


def _metadata(cur: _Cursor, n_kv: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Metadata values and their GGUF value types, keyed by (surrogate-escaped) key."""
    meta: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string(limit=1 << 16, errors="surrogateescape")
        if not key:
            raise Corrupt("is corrupt (a metadata key is empty)")
        if key in meta:
            raise Corrupt("is corrupt (a metadata key appears twice)")
        types[key] = cur.num("I")
        meta[key] = cur.value(types[key], decode=key in TEXT_KEYS)
    return meta, types


def _tensor_info(cur: _Cursor) -> tuple[str, list[int], int, int]:
    name = cur.string(limit=_MAX_NAME, errors="surrogateescape")
    n_dims = cur.num("I")
    if not name or not name.isprintable() or n_dims > 4:
        raise Corrupt("is corrupt (a tensor has a garbled name or shape)")
    dims = [cur.num("Q") for _ in range(n_dims)]
    return name, dims, cur.num("I"), cur.num("Q")


@contextlib.contextmanager
def _mapped(path: str, data: bytes | None) -> Iterator[mmap.mmap | bytes]:
    """`data` itself, else the file at `path` mapped read-only."""
    if data is not None:
        yield data
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        yield buf


def read_header(
    path: str, size: int, data: bytes | None = None
) -> tuple[dict[str, Any], dict[str, int], list[TensorRow]]:
    """(metadata, value type per key, tensors) of a GGUF file, or `Corrupt`.

    `data`, when given, is the start of the file (fetched with a range request; `size` is the
    whole file's) and is parsed instead of opening `path`: `Incomplete` says how much more of
    the file the header needs."""
    # gguf is imported on first use, not with this module: `import gguf` brings numpy and yaml
    # (a quarter of a second), which the window does not need before its first paint.
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with _mapped(path, data) as buf:
        cur = _Cursor(buf, size)
        if buf[:4] != b"GGUF":
            raise Corrupt("is not a GGUF file (bad magic)")
        cur.take(4)
        version = cur.num("I")
        if version not in (2, 3):
            if version & 0xFFFF == 0 and int.from_bytes(buf[4:8], "big") in (2, 3):
                raise Corrupt("is a big-endian GGUF file, which llama.cpp cannot load here")
            raise Corrupt(f"uses GGUF version {version}, which llama.cpp does not support")
        n_tensors, n_kv = cur.num("Q"), cur.num("Q")
        if n_kv > size // 13 or n_tensors > size // 32:
            raise Corrupt("is truncated or corrupt (more keys or tensors than it can hold)")
        meta, types = _metadata(cur, n_kv)
        alignment = meta.get("general.alignment", 32)
        if "general.alignment" in meta and types["general.alignment"] != 4:
            raise Corrupt("is corrupt (general.alignment is not a 32-bit unsigned integer)")
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise Corrupt("is corrupt (general.alignment is not a power of two)")
        infos: list[TensorRow] = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            name, dims, ttype, offset = _tensor_info(cur)
            if name in seen:
                raise Corrupt(f"is corrupt (tensor {name!r} appears twice)")
            seen.add(name)
            try:
                qtype = GGMLQuantizationType(ttype)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise Corrupt(f"uses an unknown tensor type ({ttype}) for {name}") from None
            n_elem = math.prod(dims)
            if any(d > _I64_MAX for d in dims) or n_elem > _I64_MAX:
                raise Corrupt(f"is corrupt (tensor {name} has an impossible shape)")
            if dims and dims[0] % block:
                raise Corrupt(f"is corrupt (tensor {name} rows do not fit its type)")
            infos.append(
                (name, qtype.name, n_elem, n_elem // block * type_size, offset, dims[0] if dims else 1)
            )
        data_start = -(-cur.pos // alignment) * alignment
        expected = 0  # gguf.cpp: each tensor starts where the previous one ends, aligned
        for name, _t, _n, nbytes, offset, _ne0 in infos:
            if data_start + offset + nbytes > size:
                raise Corrupt(f"is truncated (data of tensor {name} lies past the end)")
            if offset != expected:
                raise Corrupt(f"is corrupt (tensor {name} does not start where the one before it ends)")
            expected += -(-nbytes // alignment) * alignment
    return meta, types, infos


def read_tensor_dims(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (ggml type name, ne)} of a GGUF file already accepted by `read_header`
    (the dimensions that `TensorRow` folds into an element count; used for CPU repacking)."""
    return read_dims_and_meta(path)[2]


def read_dims_and_meta(
    path: str,
) -> tuple[dict[str, Any], dict[str, int], dict[str, tuple[str, tuple[int, ...]]]]:
    """`read_tensor_dims` plus the metadata and value types (a split model's part count)."""
    from gguf import GGMLQuantizationType  # lazily: see read_header

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, len(buf))
        cur.take(4)
        cur.num("I")
        n_tensors, n_kv = cur.num("Q"), cur.num("Q")
        meta, types = _metadata(cur, n_kv)
        out: dict[str, tuple[str, tuple[int, ...]]] = {}
        for _ in range(n_tensors):
            name, dims, ttype, _offset = _tensor_info(cur)
            out[name] = (GGMLQuantizationType(ttype).name, tuple(dims))
    return meta, types, out
