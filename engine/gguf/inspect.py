"""Read a GGUF model's metadata the way llama.cpp will interpret it, without loading it.

The app needs layer counts, head geometry, sliding-window layout and weight sizes before it
starts the llama.cpp child (to plan memory, and to refuse bad files with a sentence instead of a
native abort). `gguf.GGUFReader` builds numpy views per metadata element and needs 4 s (SmolLM2)
to 20 s (Gemma 3's 262k-token vocabulary), so `engine.gguf.reader` walks the header with `struct`
over an `mmap` (refusing what llama.cpp's parser refuses) and this module applies the model rules
of llama.cpp 0c1e570 (`llama_model_base::load_hparams`, `src/models/*.cpp`; the per-layer ones,
sliding window and lightning indexer, are `engine.gguf.layer_rules`); tensor data is never read.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from typing import Any

from engine.core.errors import ModelFileError
from engine.gguf.arch_keys import known_arch, visible_metadata
from engine.gguf.hparams import (
    HYBRID_ARCHS,
    MLA_ARCHS,
    MLA_KEYS,
    RECURRENT_ARCHS,
    SSM_KEYS,
    WeightLayout,
    kv_layer_flags,
    recurrent_flags,
    weight_layout,
)
from engine.gguf.layer_rules import MAX_LAYERS, indexer_layout, int_key, per_layer, swa_layout
from engine.gguf.reader import Array as _Array
from engine.gguf.reader import Corrupt as _Corrupt
from engine.gguf.reader import TensorRow, read_header
from engine.gguf.sampling_meta import recommended_sampling
from engine.gguf.sparse import sparse_meta
from engine.gguf.split_parts import read_model_header

MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS: llama.cpp aborts (GGML_ASSERT) above this.
_MAX_DIM = 1 << 20  # sanity bound for embedding width, head counts and head sizes.

Header = tuple[dict[str, Any], dict[str, int], list[TensorRow]]  # what read_header returns


@functools.cache
def _ftype_names() -> dict[int, str]:
    """{general.file_type: name}, e.g. MOSTLY_Q4_K_M -> Q4_K_M (gguf is imported on first use:
    see engine.gguf.reader)."""
    from gguf import LlamaFileType

    return {int(t): t.name.split("_", 1)[1] for t in LlamaFileType if t.name.startswith(("MOSTLY_", "ALL_"))}


@dataclasses.dataclass(frozen=True)
class GGUFInfo:
    """What llama.cpp will see in a GGUF file: the *effective* values it derives (not raw
    keys), so memory planning can use them directly. Per-layer tuples have n_layer entries."""

    path: str
    architecture: str
    name: str | None  # general.name
    n_layer: int  # {arch}.block_count, including any MTP/nextn layers
    n_ctx_train: int  # {arch}.context_length (reported even if absurdly large)
    n_embd: int
    n_head: int  # max over layers
    n_head_kv: int  # max over layers
    n_head_per_layer: tuple[int, ...]
    n_head_kv_per_layer: tuple[int, ...]  # 0 = no KV cache (recurrent layer of a hybrid)
    head_dim_k: int  # key_length, default n_embd // heads of layer 0 (0 if layer 0 has none)
    head_dim_v: int
    head_dim_k_swa: int | None  # key_length_swa where present (gemma4: SWA layers differ)
    head_dim_v_swa: int | None
    n_swa: int  # sliding window; 0 when llama.cpp runs the model without SWA
    swa_layers: tuple[bool, ...]  # True = sliding-window (or llama4 chunked) layer
    n_layer_kv_from_start: int | None  # gemma3n/gemma4: layers >= this reuse earlier KV
    recurrent: bool  # pure recurrent arch: state per sequence, no KV cache
    hybrid: bool  # llama.cpp's llm_arch_is_hybrid: KV for attention layers + recurrent state
    ssm: dict[str, int] | None  # recurrent geometry keys present (see SSM_KEYS)
    mla: dict[str, int] | None  # only when llama.cpp treats it as MLA (K-only cache)
    n_expert: int
    n_expert_used: int  # max over layers
    n_vocab: int  # tokenizer.ggml.tokens length, else {arch}.vocab_size, else 0
    tokenizer_model: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos: bool | None  # None: key absent, llama.cpp picks its per-tokenizer default
    file_type: str  # "Q4_K_M", "F16"...; the dominant tensor type when unlabelled
    has_chat_template: bool
    chat_template: str | None
    weight_types: dict[str, int]  # ggml type name ("Q4_K") -> bytes of tensors of that type
    n_params: int
    tensor_bytes: int
    file_bytes: int
    # Per-layer geometry for memory planning (notes §2-§6, §10); defaults keep old callers valid.
    n_layer_nextn: int = 0  # trailing MTP layers: no KV in the main context
    n_ff_per_layer: tuple[int, ...] = ()
    n_ff_expert: int = 0  # expert_feed_forward_length (max over layers)
    recurrent_layers: tuple[bool, ...] = ()  # hparams.is_recr(il): holds recurrent state
    kv_layers: tuple[bool, ...] = ()  # owns attention K/V tensors in the main context
    causal: bool = True  # {arch}.attention.causal
    weights: WeightLayout | None = None
    n_vocab_embd: int = 0  # rows of token_embd.weight (0: none); llama.cpp wants n_vocab rows
    # DSA lightning indexer (deepseek32, glm-dsa, hy_v4; notes §7): head_count, key_length,
    # top_k; and the layers that keep its keys in a second, K-only cache.
    indexer: dict[str, int] | None = None
    indexer_layers: tuple[bool, ...] = ()
    # deepseek4 / minimax-m3 sparse-cache geometry (engine.gguf.sparse), else None.
    sparse: dict[str, Any] | None = None
    # The author's sampling (general.sampling.*) as SamplingParams fields: the API's defaults.
    sampling: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; the template text is replaced by its length to keep reports small."""

        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        out = {k: plain(v) for k, v in dataclasses.asdict(self).items()}
        out["chat_template_chars"] = len(out.pop("chat_template") or "")
        return out


def _opt(meta: dict[str, Any], key: str, kind: type[Any]) -> Any:
    """An informative key of that type, else None (converters may write -1 for "no token")."""
    value: Any = meta.get(key)
    return value if type(value) is kind and (kind is not int or value >= 0) else None


def _build(path: str, size: int, header: Header | None = None) -> GGUFInfo:
    """Apply llama.cpp's hparam rules to the parsed header, rejecting what it would reject."""
    meta, _types, tensors = header or read_header(path, size)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch.isprintable() or not 0 < len(arch.strip()) < 64:
        raise _Corrupt("lacks a usable general.architecture")
    if arch == "clip":
        raise _Corrupt(
            "is a vision projector (mmproj), not a language model: open the model file it belongs to"
        )
    if not known_arch(arch):
        raise _Corrupt(
            f"uses the model architecture {arch!r}, which this version of llama.cpp "
            "does not know (a newer KV Deck may)"
        )
    # From here on only the keys llama.cpp's loader reads for this arch exist (arch_table).
    meta = visible_metadata(meta, arch)
    a, at = arch + ".", arch + ".attention."
    n_layer = int_key(meta, a + "block_count", required=True) or 0
    n_nextn = int_key(meta, a + "nextn_predict_layers", 0) or 0  # MTP layers, counted in n_layer
    if not 0 < n_layer <= MAX_LAYERS or n_nextn > n_layer:
        raise _Corrupt(f"has {n_layer} layers (llama.cpp accepts 1 to {MAX_LAYERS})")
    n_ctx = int_key(meta, a + "context_length", required=True, wide=True) or 0
    n_embd = int_key(meta, a + "embedding_length", required=True) or 0
    if not 0 < n_embd <= _MAX_DIM or n_ctx <= 0:
        raise _Corrupt("has an impossible embedding length or context length")
    recurrent, hybrid = arch in RECURRENT_ARCHS, arch in HYBRID_ARCHS
    heads = per_layer(meta, at + "head_count", n_layer, (0,) * n_layer)
    kv_heads = per_layer(meta, at + "head_count_kv", n_layer, heads)
    if max(heads + kv_heads) > _MAX_DIM or (not recurrent and min(max(heads), max(kv_heads)) == 0):
        raise _Corrupt(
            f"has an impossible attention head count ({max(heads)} heads, {max(kv_heads)} KV heads)"
        )
    # Only hybrids (recurrent layers), pure recurrent archs and deci (linear-attention layers)
    # may have layers without KV heads; elsewhere llama.cpp asserts while building the graph.
    kv_optional = recurrent or hybrid or arch == "deci"
    for il, (nh, nkv) in enumerate(zip(heads, kv_heads)):
        if (nkv and (nh == 0 or nh % nkv)) or (not nkv and not kv_optional and il < n_layer - n_nextn):
            raise _Corrupt(f"has {nh} attention heads but {nkv} KV heads in layer {il}")
    # Head sizes derive from layer 0 only, exactly like llama_model_base::load_hparams.
    hk = hv = 0
    if heads[0]:
        if n_embd % heads[0] and (at + "key_length" not in meta or at + "value_length" not in meta):
            raise _Corrupt(f"has an embedding length ({n_embd}) not divisible by its head count")
        hk = int_key(meta, at + "key_length", n_embd // heads[0]) or 0
        hv = int_key(meta, at + "value_length", n_embd // heads[0]) or 0
    hk_swa, hv_swa = (int_key(meta, at + f"{kv}_length_swa") for kv in ("key", "value"))
    if max(kv_heads) and (not 0 < hk <= _MAX_DIM or not 0 < hv <= _MAX_DIM):
        raise _Corrupt("has attention layers but an impossible head size")
    n_swa, swa_layers = swa_layout(meta, arch, n_layer, n_layer - n_nextn, kv_heads)
    from_start = {"gemma3n": 20, "gemma4": n_layer - (int_key(meta, at + "shared_kv_layers", 0) or 0)}.get(
        arch
    )
    if from_start is not None:  # reuse targets must exist and be of the same kind, or abort
        if from_start < 2:
            raise _Corrupt("shares the KV cache of more layers than it has")
        for il in range(from_start, n_layer):
            target = from_start - (2 if swa_layers[il] else 1)
            if swa_layers[target] != swa_layers[il]:
                raise _Corrupt(
                    f"has shared-KV layer {il} whose source layer {target} is of the other attention kind"
                )
    ssm = {v: int_key(meta, a + k) or 0 for k, v in SSM_KEYS.items() if a + k in meta}
    n_ff = per_layer(meta, a + "feed_forward_length", n_layer, (0,) * n_layer)
    n_ff_exp = max(per_layer(meta, a + "expert_feed_forward_length", n_layer, (0,)))
    rl = meta.get(at + "recurrent_layers")
    try:
        recr = recurrent_flags(
            arch,
            n_layer,
            n_layer - n_nextn,
            kv_heads,
            n_ff,
            rl.items if isinstance(rl, _Array) else None,
            ssm.get("full_attention_interval"),
        )
    except ValueError as exc:
        raise _Corrupt(f"has an unusable {at}recurrent_layers ({exc})") from None
    indexer, indexer_layers = indexer_layout(meta, arch, n_layer, n_layer - n_nextn, n_ctx, recr)
    # Only the MLA archs' loaders read the `_mla` keys, and llama_hparams::is_mla() asks for
    # both head sizes to be non-zero: other writers put these keys, zeroed, into every file.
    mla = {k: int_key(meta, at + k) or 0 for k in MLA_KEYS if at + k in meta} if arch in MLA_ARCHS else {}
    is_mla = bool(mla.get("key_length_mla")) and bool(mla.get("value_length_mla"))
    n_expert = int_key(meta, a + "expert_count", 0) or 0
    n_expert_used = max(per_layer(meta, a + "expert_used_count", n_layer, (0,)))
    if n_expert > MAX_EXPERTS or n_expert_used > n_expert or (n_expert and not n_expert_used):
        raise _Corrupt(f"has an impossible expert setup ({n_expert_used} of {n_expert} used)")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = _opt(meta, "tokenizer.ggml.model", str)
    if vocab not in (None, "none", "no_vocab") and not isinstance(tokens, _Array):
        raise _Corrupt(f"lacks its vocabulary (tokenizer.ggml.tokens) for the {vocab!r} tokenizer")
    n_vocab = tokens.length if isinstance(tokens, _Array) else int_key(meta, a + "vocab_size", 0) or 0
    template = _opt(meta, "tokenizer.chat_template", str)
    template = template if template and template.strip() else None
    embd_rows = next(
        (n // max(1, ne0) for name, _t, n, _b, _o, ne0 in tensors if name == "token_embd.weight"), 0
    )
    weight_types: dict[str, int] = {}
    for _name, tname, _n, nbytes, _offset, _ne0 in tensors:
        weight_types[tname] = weight_types.get(tname, 0) + nbytes
    ftype = meta.get("general.file_type")  # else name the type that holds the most bytes
    file_type = (_ftype_names().get(ftype) if type(ftype) is int else None) or max(
        weight_types, key=weight_types.__getitem__, default="unknown"
    )
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=_opt(meta, "general.name", str),
        n_layer=n_layer,
        n_ctx_train=n_ctx,
        n_embd=n_embd,
        n_head=max(heads),
        n_head_kv=max(kv_heads),
        n_head_per_layer=heads,
        n_head_kv_per_layer=kv_heads,
        head_dim_k=hk,
        head_dim_v=hv,
        head_dim_k_swa=hk_swa,
        head_dim_v_swa=hv_swa,
        n_swa=n_swa,
        swa_layers=swa_layers,
        n_layer_kv_from_start=from_start,
        recurrent=recurrent,
        hybrid=hybrid,
        ssm=ssm or None,
        mla=mla if is_mla else None,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_vocab=n_vocab,
        tokenizer_model=vocab,
        bos_token_id=_opt(meta, "tokenizer.ggml.bos_token_id", int),
        eos_token_id=_opt(meta, "tokenizer.ggml.eos_token_id", int),
        add_bos=_opt(meta, "tokenizer.ggml.add_bos_token", bool),
        file_type=file_type,
        has_chat_template=template is not None,
        chat_template=template,
        weight_types=weight_types,
        n_params=sum(t[2] for t in tensors),
        tensor_bytes=sum(t[3] for t in tensors),
        file_bytes=size,
        n_layer_nextn=n_nextn,
        n_ff_per_layer=n_ff,
        n_ff_expert=n_ff_exp,
        recurrent_layers=recr,
        kv_layers=kv_layer_flags(arch, n_layer, n_layer - n_nextn, recr, n_ff, from_start),
        causal=meta.get(at + "causal") is not False,
        weights=weight_layout(tensors, n_layer, arch, n_nextn),
        n_vocab_embd=embd_rows,
        indexer=indexer,
        indexer_layers=indexer_layers,
        sparse=sparse_meta(meta, arch, n_layer),
        sampling=recommended_sampling(meta),
    )


def inspect_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Describe a GGUF model from its header alone (milliseconds, whatever the file size).

    Any failure (missing, unreadable, not GGUF, truncated, or a model llama.cpp would reject
    or abort on) becomes a one-line `ModelFileError` naming the file."""
    path = os.fspath(path)
    label = os.path.basename(os.path.normpath(path)) or path
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise _Corrupt("is a directory, not a model file")
        if not stat.S_ISREG(st.st_mode):  # /dev/zero or a pipe renamed .gguf: never open it
            raise _Corrupt("is not a regular file (a device, pipe or socket), not a model file")
        size = st.st_size
        if size < 24:
            raise _Corrupt("is empty" if size == 0 else "is too small to be a GGUF file")
        header, size = read_model_header(path, size)  # every part of a split model
        return _build(path, size, header)
    except _Corrupt as exc:
        raise ModelFileError(f"{label} {exc}") from None
    except FileNotFoundError:
        raise ModelFileError(f"{label} does not exist") from None
    except OSError as exc:  # permission denied, I/O error, special files...
        raise ModelFileError(f"{label} cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # a parser bug must still read as a sentence, never a traceback
        raise ModelFileError(f"{label} could not be inspected ({type(exc).__name__}: {exc})") from exc


def inspect_header(path: str, header: Header, file_bytes: int) -> GGUFInfo:
    """`inspect_gguf` for a header parsed elsewhere: read with range requests from a prefix of
    a remote file (engine.hub), or the tensor tables of a split model's parts put together.
    `path` names the model in messages and must hold a copy of the header for re-reads
    (`read_tensor_dims`); the same rules apply and failures read the same."""
    label = os.path.basename(os.path.normpath(path)) or path
    try:
        return _build(path, file_bytes, header)
    except _Corrupt as exc:
        raise ModelFileError(f"{label} {exc}") from None


def recommended_sampling_of(path: str | None) -> dict[str, float]:
    """The sampling the model file at ``path`` recommends (``GGUFInfo.sampling``); empty for
    none, or when there is no readable file. Read once per file version: the window asks each
    time a conversation opens, the API server on every request."""
    if not path:
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return dict(_recommendation(path, st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=16)
def _recommendation(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, float], ...]:
    try:
        return tuple(inspect_gguf(path).sampling.items())
    except (ModelFileError, OSError):
        return ()
