"""Malformed and hostile GGUF files, each named with the failure it must provoke.

A GGUF downloaded from the internet is untrusted input to two parsers (ours, then llama.cpp's), to
the memory planner and to a Jinja2 template engine. Every case starts from a small valid model
(`tests/helpers/gguf_factory.py`), taken apart here into its raw pieces (so lengths, counts and offsets
can lie, which `gguf.GGUFWriter` never allows), and changes one thing. `stage` is where KV Deck
must refuse it:

* ``inspect``: `inspect_gguf` refuses it; nothing else runs (every command fails the same way);
* ``plan``: inspection describes it; `check_settings` refuses it before any memory is planned;
* ``fit``: it can be planned, but nothing fits this machine: `fit`/`preflight` refuse to load;
* ``load``: every up-front check passes; llama.cpp refuses it and the runtime child survives;
* ``template``: it loads; rendering its chat template fails with a one-line TemplateError;
* ``none``: hostile-looking but valid (llama.cpp clamps or ignores it): it loads and runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.helpers.gguf_raw import (
    BIG,
    CHATML,
    KV,
    T_ARR,
    T_BOOL,
    T_F32,
    T_I32,
    T_STR,
    T_U32,
    T_U64,
    Spec,
    Tensor,
    _str,
    _u32,
    _u64,
    base,
    kv,
    kv_array,
)

Stage = Literal["inspect", "plan", "fit", "load", "template", "none"]


@dataclass(frozen=True)
class Hostile:
    """One hostile file: `make()` returns its bytes; `expect` is a fragment of the refusal."""

    name: str
    kind: str
    stage: Stage
    make: Callable[[], bytes | tuple[bytes, int]]
    expect: str = ""

    def write(self, path: Path) -> Path:
        """Write the file; huge zero data becomes a sparse hole (no disk, no RAM)."""
        made = self.make()
        data, size = made if isinstance(made, tuple) else (made, len(made))
        with open(path, "wb") as fh:
            fh.write(data)
            fh.truncate(size)
        return path


def _mutate(fn: Callable[[Spec], object], family: str = "llama") -> Callable[[], bytes | tuple[bytes, int]]:
    def make() -> bytes | tuple[bytes, int]:
        spec = base(family)
        result = fn(spec)
        if isinstance(result, bytes):
            return result
        data = spec.to_bytes()
        return (data, spec.marks["size"]) if spec.marks["size"] > len(data) else data

    return make


def _cut(where: Callable[[Spec], int]) -> Callable[[], bytes]:
    def make() -> bytes:
        spec = base()
        data = spec.to_bytes()
        return data[: where(spec)]

    return make


def _truncations() -> list[Hostile]:
    """The valid file cut inside every section: header, counts, each pair, infos, data."""
    out = [
        Hostile(f"cut-header-{n}", "truncated", "inspect", _cut(lambda s, n=n: n))
        for n in (0, 3, 4, 6, 8, 12, 16, 20, 24)
    ]
    spec = base()
    spec.to_bytes()
    for i, pair in enumerate(spec.kvs):
        name = pair.key.decode()
        out.append(
            Hostile(
                f"cut-in-value-of-{name}",
                "truncated",
                "inspect",
                _cut(lambda s, i=i: s.marks[f"kv{i}.value"] + max(0, len(s.kvs[i].body) // 2 - 1)),
            )
        )
    out += [
        Hostile("cut-in-first-key", "truncated", "inspect", _cut(lambda s: s.marks["kv0"] + 12)),
        Hostile("cut-in-first-tensor-info", "truncated", "inspect", _cut(lambda s: s.marks["t0"] + 10)),
        Hostile(
            "cut-in-last-tensor-info",
            "truncated",
            "inspect",
            _cut(lambda s: s.marks[f"t{len(s.tensors) - 1}"] + 20),
        ),
        Hostile("cut-after-tensor-infos", "truncated", "inspect", _cut(lambda s: s.marks["infos_end"])),
        Hostile(
            "cut-in-tensor-data",
            "truncated",
            "inspect",
            _cut(lambda s: (s.marks["data"] + len(s.to_bytes())) // 2),
        ),
        Hostile("cut-last-byte", "truncated", "inspect", lambda: base().to_bytes()[:-1]),
    ]
    return out


def _header_and_counts() -> list[Hostile]:
    def field_(attr: str, value: object) -> Callable[[], bytes]:
        return _mutate(lambda s: setattr(s, attr, value))

    return [
        Hostile("bad-magic", "header", "inspect", field_("magic", b"GGUG"), "bad magic"),
        Hostile("ggml-era-magic", "header", "inspect", field_("magic", b"ggjt"), "bad magic"),
        Hostile("version-1", "header", "inspect", field_("version", 1), "version 1"),
        Hostile("version-4", "header", "inspect", field_("version", 4), "version 4"),
        Hostile("version-max", "header", "inspect", field_("version", 2**32 - 1), "version"),
        Hostile("big-endian-version", "header", "inspect", field_("version", 3 << 24), "big-endian"),
        Hostile("tensor-count-2^63", "counts", "inspect", field_("n_tensors", BIG)),
        Hostile("tensor-count-negative", "counts", "inspect", field_("n_tensors", 2**64 - 1)),
        Hostile("key-count-2^63", "counts", "inspect", field_("n_kv", BIG)),
        Hostile("key-count-2^32", "counts", "inspect", field_("n_kv", 2**32)),
        Hostile(
            "key-count-one-short", "counts", "inspect", _mutate(lambda s: setattr(s, "n_kv", len(s.kvs) - 1))
        ),
        Hostile(
            "tensor-count-one-more",
            "counts",
            "inspect",
            _mutate(lambda s: setattr(s, "n_tensors", len(s.tensors) + 1)),
        ),
        Hostile("zeros-1k", "header", "inspect", lambda: bytes(1024), "bad magic"),
        Hostile("magic-then-noise", "header", "inspect", lambda: b"GGUF" + _u32(3) + bytes(range(256)) * 8),
    ]


def _lengths() -> list[Hostile]:
    def first_key_len(s: Spec) -> bytes:
        data = bytearray(s.to_bytes())
        data[s.marks["kv0"] : s.marks["kv0"] + 8] = _u64(BIG)
        return bytes(data)

    def name_len(n: int) -> Callable[[Spec], bytes]:
        def fn(s: Spec) -> bytes:
            data = bytearray(s.to_bytes())
            at = s.marks[f"kv{s.kvs.index(s.get('general.name'))}.value"]  # type: ignore[arg-type]
            data[at : at + 8] = _u64(n)
            return bytes(data)

        return fn

    def tensor_name_len(s: Spec) -> bytes:
        data = bytearray(s.to_bytes())
        data[s.marks["t0"] : s.marks["t0"] + 8] = _u64(BIG)
        return bytes(data)

    tokens = "tokenizer.ggml.tokens"
    return [
        Hostile("key-length-2^63", "lengths", "inspect", _mutate(first_key_len), "long key"),
        Hostile("string-length-2^63", "lengths", "inspect", _mutate(name_len(BIG))),
        Hostile("string-length-1GiB+1", "lengths", "inspect", _mutate(name_len(2**30 + 1))),
        Hostile("string-length-max", "lengths", "inspect", _mutate(name_len(2**64 - 1))),
        Hostile(
            "token-array-length-2^62",
            "lengths",
            "inspect",
            _mutate(lambda s: s.set(kv_array(tokens, T_STR, ["a", "b"], count=2**62))),
            "array",
        ),
        Hostile(
            "score-array-length-2^61",
            "lengths",
            "inspect",
            _mutate(lambda s: s.set(kv_array("tokenizer.ggml.scores", T_F32, [0.0], count=2**61))),
        ),
        Hostile(
            "type-array-length-2^62",
            "lengths",
            "inspect",
            _mutate(lambda s: s.set(kv_array("tokenizer.ggml.token_type", T_I32, [1], count=2**62))),
        ),
        Hostile(
            "nested-array",
            "lengths",
            "inspect",
            _mutate(
                lambda s: s.set(
                    KV(b"llama.nested", T_ARR, _u32(T_ARR) + _u64(1) + _u32(T_U32) + _u64(1) + _u32(7))
                )
            ),
            "array",
        ),
        Hostile(
            "unknown-value-type",
            "lengths",
            "inspect",
            _mutate(lambda s: s.set(kv("llama.odd", _u32(1), vtype=13))),
            "value type",
        ),
        Hostile(
            "unknown-array-element-type",
            "lengths",
            "inspect",
            _mutate(lambda s: s.set(KV(b"llama.odd", T_ARR, _u32(99) + _u64(1) + _u32(1)))),
            "array",
        ),
        Hostile("empty-key", "lengths", "inspect", _mutate(lambda s: s.set(kv("", 1)))),
        Hostile("tensor-name-length-2^63", "lengths", "inspect", _mutate(tensor_name_len)),
        Hostile(
            "tensor-name-64-bytes",
            "lengths",
            "inspect",
            _mutate(lambda s: setattr(s.tensors[0], "name", b"x" * 64)),
        ),
        Hostile(
            "tensor-5-dims",
            "shapes",
            "inspect",
            _mutate(lambda s: setattr(s.tensors[0], "dims", [1, 1, 1, 1, 64 * 320])),
        ),
        Hostile(
            "tensor-dims-count-max",
            "shapes",
            "inspect",
            _mutate(
                lambda s: s.to_bytes().replace(
                    _str(b"token_embd.weight") + _u32(2), _str(b"token_embd.weight") + _u32(2**32 - 1)
                )
            ),
        ),
        Hostile(
            "tensor-type-99",
            "shapes",
            "inspect",
            _mutate(lambda s: setattr(s.tensors[0], "ttype", 99)),
            "tensor type",
        ),
    ]


def _shapes_and_offsets() -> list[Hostile]:
    def dims(*d: int) -> Callable[[Spec], object]:
        return lambda s: setattr(s.tensor("token_embd.weight"), "dims", list(d))

    def offset(i: int, fn: Callable[[Spec], int]) -> Callable[[Spec], object]:
        return lambda s: setattr(s.tensors[i], "offset", fn(s))

    def data_offset(s: Spec, i: int) -> int:
        return sum(-(-t.nbytes() // s.alignment) * s.alignment for t in s.tensors[:i])

    def dup(s: Spec) -> None:
        s.tensors[2].name = s.tensors[1].name

    return [
        Hostile("shape-product-2^128", "shapes", "inspect", _mutate(dims(2**32, 2**32, 2**32, 2**32))),
        Hostile("shape-dim-2^63", "shapes", "inspect", _mutate(dims(64, BIG))),
        Hostile("shape-dim-negative", "shapes", "inspect", _mutate(dims(64, 2**64 - 1))),
        Hostile("shape-zero-elements", "shapes", "load", _mutate(dims(64, 0))),
        Hostile(
            "quantized-row-not-whole-blocks",
            "shapes",
            "inspect",
            _mutate(lambda s: (setattr(s.tensors[0], "ttype", 2), setattr(s.tensors[0], "dims", [33, 320]))),
            "rows",
        ),
        Hostile(
            "data-offset-past-end", "offsets", "inspect", _mutate(offset(-1, lambda s: 2**40)), "past the end"
        ),
        Hostile("data-offset-max", "offsets", "inspect", _mutate(offset(-1, lambda s: 2**64 - 1))),
        Hostile(
            "data-offset-misaligned",
            "offsets",
            "inspect",
            _mutate(offset(2, lambda s: data_offset(s, 2) + 1)),
        ),
        Hostile("tensors-overlap", "offsets", "inspect", _mutate(offset(2, lambda s: data_offset(s, 1)))),
        Hostile("duplicate-tensor-name", "offsets", "inspect", _mutate(dup), "twice"),
        Hostile(
            "alignment-3",
            "offsets",
            "inspect",
            _mutate(lambda s: s.set(kv("general.alignment", 3))),
            "alignment",
        ),
        Hostile(
            "alignment-0",
            "offsets",
            "inspect",
            _mutate(lambda s: s.set(kv("general.alignment", 0))),
            "alignment",
        ),
        Hostile(
            "alignment-as-u64",
            "offsets",
            "inspect",
            _mutate(lambda s: s.set(kv("general.alignment", 32, vtype=T_U64))),
            "alignment",
        ),
        Hostile(
            "missing-tensor",
            "offsets",
            "load",
            _mutate(lambda s: s.tensors.remove(s.tensor("blk.1.attn_q.weight"))),
        ),
        Hostile(
            "extra-tensor",
            "offsets",
            "load",
            _mutate(lambda s: s.tensors.append(Tensor(b"blk.9.extra.weight", [64], 0))),
        ),
        Hostile(
            "weights-256GiB-sparse",
            "memory",
            "fit",
            _mutate(lambda s: setattr(s.tensor("blk.0.ffn_up.weight"), "dims", [64, 2**31])),
        ),
    ]


def _rename_arch(s: Spec, new: bytes) -> None:
    for pair in s.kvs:
        if pair.key.startswith(b"llama."):
            pair.key = new + pair.key[5:]
    s.set(kv("general.architecture", _str(new), T_STR))


def _metadata() -> list[Hostile]:
    L = "llama."

    def put(
        *pairs: KV, drop: tuple[str, ...] = (), family: str = "llama"
    ) -> Callable[[], bytes | tuple[bytes, int]]:
        def fn(s: Spec) -> None:
            s.drop(*drop)
            for pair in pairs:
                s.set(pair)

        return _mutate(fn, family)

    no_vocab = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    bad = b"\xff\xfe"
    return [
        Hostile(
            "unknown-architecture",
            "metadata",
            "inspect",
            _mutate(lambda s: _rename_arch(s, b"futurellama")),
            "architecture",
        ),
        Hostile(
            "architecture-empty", "metadata", "inspect", put(kv("general.architecture", "")), "architecture"
        ),
        Hostile(
            "architecture-not-a-string",
            "metadata",
            "inspect",
            put(kv("general.architecture", 7)),
            "architecture",
        ),
        Hostile(
            "architecture-escape-codes",
            "metadata",
            "inspect",
            _mutate(lambda s: _rename_arch(s, b"\x1b[2Jllama")),
            "architecture",
        ),
        Hostile(
            "architecture-not-utf8",
            "metadata",
            "inspect",
            _mutate(lambda s: _rename_arch(s, b"lla" + bad)),
            "architecture",
        ),
        Hostile(
            "missing-architecture", "metadata", "inspect", put(drop=("general.architecture",)), "architecture"
        ),
        *(
            Hostile(f"missing-{k}", "metadata", "inspect", put(drop=(L + k,)), k)
            for k in ("block_count", "context_length", "embedding_length")
        ),
        Hostile(
            "missing-head-count",
            "metadata",
            "inspect",
            put(drop=(L + "attention.head_count", L + "attention.head_count_kv")),
            "head",
        ),
        Hostile("missing-vocabulary", "metadata", "inspect", put(drop=no_vocab), "vocabulary"),
        Hostile("missing-tokenizer", "metadata", "plan", put(drop=("tokenizer.ggml.model",)), "tokenizer"),
        Hostile("layers-0", "metadata", "inspect", put(kv(L + "block_count", 0)), "layers"),
        Hostile("layers-513", "metadata", "inspect", put(kv(L + "block_count", 513)), "layers"),
        Hostile("layers-u32-max", "metadata", "inspect", put(kv(L + "block_count", 2**32 - 1)), "layers"),
        Hostile("head-count-0", "metadata", "inspect", put(kv(L + "attention.head_count", 0)), "head"),
        Hostile(
            "kv-heads-do-not-divide",
            "metadata",
            "inspect",
            put(kv(L + "attention.head_count", 4), kv(L + "attention.head_count_kv", 3)),
            "KV heads",
        ),
        Hostile(
            "heads-do-not-divide-width",
            "metadata",
            "inspect",
            put(
                kv(L + "attention.head_count", 3),
                kv(L + "attention.head_count_kv", 1),
                drop=(L + "attention.key_length", L + "attention.value_length"),
            ),
            "divisible",
        ),
        Hostile(
            "head-count-array-wrong-length",
            "metadata",
            "inspect",
            put(kv_array(L + "attention.head_count", T_U32, [2, 2, 2])),
            "per layer",
        ),
        Hostile(
            "kv-heads-zero-in-one-layer",
            "metadata",
            "inspect",
            put(kv_array(L + "attention.head_count_kv", T_U32, [1, 0])),
            "KV heads",
        ),
        Hostile("head-size-0", "metadata", "inspect", put(kv(L + "attention.key_length", 0)), "head size"),
        Hostile(
            "head-size-2^31", "metadata", "inspect", put(kv(L + "attention.key_length", 2**31)), "head size"
        ),
        Hostile("embedding-0", "metadata", "inspect", put(kv(L + "embedding_length", 0)), "embedding"),
        Hostile("embedding-2^40", "metadata", "inspect", put(kv(L + "embedding_length", 2**40)), "embedding"),
        Hostile("context-0", "metadata", "inspect", put(kv(L + "context_length", 0)), "context"),
        Hostile(
            "context-float", "metadata", "inspect", put(kv(L + "context_length", 4096.0)), "context_length"
        ),
        Hostile("context-2^40", "metadata", "plan", put(kv(L + "context_length", 2**40)), "32 bits"),
        Hostile("context-u32-max", "metadata", "none", put(kv(L + "context_length", 2**32 - 1))),
        Hostile(
            "feed-forward-2^60",
            "metadata",
            "inspect",
            put(kv(L + "feed_forward_length", 2**60)),
            "feed_forward_length",
        ),
        Hostile(
            "experts-2000",
            "metadata",
            "inspect",
            put(kv(L + "expert_count", 2000), kv(L + "expert_used_count", 2)),
            "expert",
        ),
        Hostile(
            "experts-used-beyond-count",
            "metadata",
            "inspect",
            put(kv(L + "expert_count", 4), kv(L + "expert_used_count", 9)),
            "expert",
        ),
        Hostile(
            "vocab-size-2^40-no-tokens",
            "vocab",
            "inspect",
            put(kv("tokenizer.ggml.model", "none"), kv(L + "vocab_size", 2**40), drop=no_vocab),
            "vocab_size",
        ),
        Hostile(
            "vocab-size-2^31-no-tokens",
            "vocab",
            "plan",
            put(kv("tokenizer.ggml.model", "none"), kv(L + "vocab_size", 2**31), drop=no_vocab),
            "vocabulary",
        ),
        Hostile(
            "vocab-1M-tokens",
            "vocab",
            "plan",
            put(
                kv_array("tokenizer.ggml.tokens", T_STR, [f"t{i}" for i in range(1 << 20)]), drop=no_vocab[1:]
            ),
            "token embeddings",
        ),
        Hostile(
            "special-token-ids-beyond-vocab",
            "vocab",
            "none",
            put(kv("tokenizer.ggml.bos_token_id", 2**32 - 2), kv("tokenizer.ggml.eos_token_id", 999_999)),
        ),
        Hostile("name-not-utf8", "utf8", "none", put(kv("general.name", _str(b"\xff\xfeABCD"), T_STR))),
        Hostile(
            "keys-differ-only-in-bad-utf8",
            "utf8",
            "none",
            put(kv(b"llama.x" + bad, 1), kv(b"llama.x\xfd\xfc", 2)),
        ),
        Hostile(
            "tokens-not-utf8",
            "utf8",
            "none",
            put(
                kv_array(
                    "tokenizer.ggml.tokens",
                    T_STR,
                    ["<unk>", "<s>", "</s>"]
                    + [f"<0x{b:02X}>" for b in range(256)]
                    + [b"\xff\xfe\xfd" + bytes([i % 250 + 1]) for i in range(61)],
                )
            ),
        ),
        Hostile(
            "template-not-utf8",
            "utf8",
            "none",
            put(kv("tokenizer.chat_template", _str(CHATML.encode() + bad), T_STR)),
        ),
        Hostile(
            "tensor-name-not-utf8",
            "utf8",
            "inspect",
            _mutate(lambda s: setattr(s.tensors[0], "name", b"token_embd" + bad)),
        ),
        Hostile(
            "sliding-window-beyond-context",
            "swa",
            "none",
            put(kv("gemma2.attention.sliding_window", 1 << 20), family="gemma2"),
        ),
        Hostile(
            "sliding-window-2^40",
            "swa",
            "inspect",
            put(kv("gemma2.attention.sliding_window", 2**40), family="gemma2"),
            "sliding_window",
        ),
        Hostile(
            "sliding-pattern-600-layers",
            "swa",
            "inspect",
            put(kv_array("gemma4.attention.sliding_window_pattern", T_BOOL, [True] * 600), family="gemma4"),
            "sliding_window_pattern",
        ),
        *(
            Hostile(
                f"shared-kv-layers-{n}",
                "shared-kv",
                "inspect",
                put(kv("gemma4.attention.shared_kv_layers", n), family="gemma4"),
                "shares the KV cache",
            )
            for n in (5, 6, 100, 2**32 - 1)
        ),
    ]


# Chat templates: each loads fine and must fail at rendering, quickly and in one line.
HOSTILE_TEMPLATES: dict[str, str] = {
    "escape-mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "escape-globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "escape-lipsum": "{{ lipsum.__globals__['os'].system('touch /tmp/kvdeck-pwned') }}",
    "escape-self": "{{ self._TemplateReference__context }}",
    "escape-format": "{{ '{0.__class__.__mro__}'.format('') }}",
    "loop-forever": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "string-bomb": "{{ 'x' * 10**12 }}",
    "center-bomb": "{{ 'x'.center(10**10) }}",
    "percent-bomb": "{{ '%10000000000s' % 'x' }}",
    "format-bomb": "{{ '{:>10000000000}'.format('x') }}",
    "replace-bomb": "{{ ('x' * 60000).replace('', 'y' * 60000) }}",
    "indent-bomb": "{{ ('a\n' * 100000) | indent(' ' * 100000) }}",
    "join-bomb": "{{ ('z' * 3000000).join(range(5000) | map('string')) }}",
    "output-bomb": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "range-bomb": "{{ range(10**9) | list }}",
    "refuses": "{{ raise_exception('this template refuses every conversation') }}",
    "syntax-error": "{% for %}",
    "oversized": "{# " + "x" * 300_000 + " #}",
}


def _templates() -> list[Hostile]:
    return [
        Hostile(
            f"template-{name}",
            "template",
            "template",
            _mutate(lambda s, t=t: s.set(kv("tokenizer.chat_template", t))),
            "template",
        )
        for name, t in HOSTILE_TEMPLATES.items()
    ]


def all_cases() -> list[Hostile]:
    """Every hostile file, with a unique name."""
    cases = (
        _truncations()
        + _header_and_counts()
        + _lengths()
        + _shapes_and_offsets()
        + _metadata()
        + _templates()
    )
    assert len({c.name for c in cases}) == len(cases)
    return cases


def write_all(directory: Path, cases: list[Hostile] | None = None) -> list[tuple[Hostile, Path]]:
    """Write every case as `<name>.gguf` under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return [(c, c.write(directory / f"{c.name}.gguf")) for c in cases or all_cases()]
