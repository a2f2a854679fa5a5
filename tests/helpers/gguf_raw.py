"""GGUF files taken apart into raw pieces, so that any field can lie.

`gguf.GGUFWriter` only writes valid files; hostile-file tests need counts, lengths, shapes and
offsets that contradict the bytes around them. `parse` splits a valid file (from
`tests/helpers/gguf_factory.py`) into metadata pairs and tensor infos; `Spec.to_bytes` writes them back
with whatever lies a test put in, laying out zero tensor data the way a valid writer would.
"""

from __future__ import annotations

import copy
import functools
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from tests.helpers.gguf_factory import write_family, write_llama

T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64 = 4, 5, 6, 7, 8, 9, 10
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FMT = {T_U32: "<I", T_I32: "<i", T_F32: "<f", T_BOOL: "<?", T_U64: "<Q"}
BIG = 2**63 - 1
_MAX_DATA = 64 << 20
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return _u64(len(raw)) + raw


@dataclass
class KV:
    """One metadata pair: the key and its value already encoded (after the type id)."""

    key: bytes
    vtype: int
    body: bytes


@dataclass
class Tensor:
    """One tensor info; offset None = where a valid writer would put it."""

    name: bytes
    dims: list[int]
    ttype: int
    offset: int | None = None

    def nbytes(self) -> int:
        try:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.ttype)]
        except (ValueError, KeyError):
            return 0
        n = 1
        for d in self.dims:
            n *= d
        return n // block * size if n < 2**40 else 0


@dataclass
class Spec:
    """A GGUF file as parts; `to_bytes` writes it, with zero tensor data laid out validly."""

    kvs: list[KV]
    tensors: list[Tensor]
    magic: bytes = b"GGUF"
    version: int = 3
    n_tensors: int | None = None  # None: the real count
    n_kv: int | None = None
    alignment: int = 32
    marks: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        out = bytearray(self.magic + _u32(self.version))
        self.marks = {"n_tensors": len(out)}
        out += _u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
        self.marks["n_kv"] = len(out)
        out += _u64(len(self.kvs) if self.n_kv is None else self.n_kv)
        for i, kv in enumerate(self.kvs):
            self.marks[f"kv{i}"] = len(out)
            out += _str(kv.key)
            self.marks[f"kv{i}.value"] = len(out) + 4
            out += _u32(kv.vtype) + kv.body
        self.marks["infos"] = len(out)
        offset = 0
        for i, t in enumerate(self.tensors):
            self.marks[f"t{i}"] = len(out)
            out += _str(t.name) + _u32(len(t.dims)) + b"".join(_u64(d) for d in t.dims)
            out += _u32(t.ttype) + _u64(offset if t.offset is None else t.offset)
            offset += -(-t.nbytes() // self.alignment) * self.alignment
        self.marks["infos_end"] = len(out)
        out += bytes(-len(out) % self.alignment)
        self.marks["data"] = len(out)
        self.marks["size"] = len(out) + offset  # zeros past _MAX_DATA are left as a hole
        return bytes(out + bytes(min(offset, _MAX_DATA)))

    def get(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key.encode()), None)

    def set(self, kv: KV) -> Spec:
        """Replace the pair with that key in place, or append it."""
        for i, old in enumerate(self.kvs):
            if old.key == kv.key:
                self.kvs[i] = kv
                return self
        self.kvs.append(kv)
        return self

    def drop(self, *keys: str) -> Spec:
        self.kvs = [kv for kv in self.kvs if kv.key.decode("utf-8", "replace") not in keys]
        return self

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name.encode())


def kv(key: str | bytes, value: object, vtype: int | None = None) -> KV:
    """Encode a scalar/string (or a raw `bytes` body with an explicit vtype)."""
    k = key.encode() if isinstance(key, str) else key
    if vtype is not None and isinstance(value, bytes):
        return KV(k, vtype, value)
    if isinstance(value, str):
        return KV(k, T_STR, _str(value))
    if isinstance(value, bool):
        return KV(k, T_BOOL, struct.pack("<?", value))
    if isinstance(value, float):
        return KV(k, T_F32, struct.pack("<f", value))
    t = vtype or (T_U32 if 0 <= int(value) < 2**32 else T_U64)  # type: ignore[call-overload]
    return KV(k, t, struct.pack(_FMT[t], value))


def kv_array(key: str, elem: int, items: list[object], count: int | None = None) -> KV:
    """An array pair; `count` may lie about the number of items."""
    enc = b"".join(
        _str(x) if elem == T_STR else struct.pack(_FMT[elem], x)  # type: ignore[arg-type]
        for x in items
    )
    return KV(key.encode(), T_ARR, _u32(elem) + _u64(len(items) if count is None else count) + enc)


def _skip(buf: bytes, pos: int, vtype: int) -> int:
    if vtype in _SCALAR:
        return pos + _SCALAR[vtype]
    if vtype == T_STR:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    elem, n = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    for _ in range(n):
        pos = _skip(buf, pos, elem)
    return pos


def parse(buf: bytes) -> Spec:
    """Take a valid GGUF file apart (tensor data is dropped: the factory writes zeros)."""
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos, kvs, tensors = 24, [], []
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", buf, pos)[0]
        key, pos = buf[pos + 8 : pos + 8 + n], pos + 8 + n
        vtype = struct.unpack_from("<I", buf, pos)[0]
        end = _skip(buf, pos + 4, vtype)
        kvs.append(KV(key, vtype, buf[pos + 4 : end]))
        pos = end
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", buf, pos)[0]
        name, pos = buf[pos + 8 : pos + 8 + n], pos + 8 + n
        n_dims = struct.unpack_from("<I", buf, pos)[0]
        dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        pos += 4 + 8 * n_dims
        ttype = struct.unpack_from("<I", buf, pos)[0]
        pos += 12
        tensors.append(Tensor(name, dims, ttype))
    return Spec(kvs, tensors)


@functools.cache
def _base_bytes(family: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        if family == "llama":
            path = write_llama(
                Path(tmp) / "base.gguf",
                n_layer=2,
                n_embd=64,
                n_head=2,
                n_head_kv=1,
                head_dim=32,
                n_ff=128,
                **{"tokenizer.chat_template": CHATML},
            )
        else:
            path = write_family(family, tmp)
        return path.read_bytes()


def base(family: str = "llama") -> Spec:
    """A fresh, mutable copy of a valid model of that family."""
    return copy.deepcopy(parse(_base_bytes(family)))
