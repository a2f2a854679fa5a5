"""Which weights llama.cpp (0c1e570) repacks into a `CPU_REPACK` buffer, and how many bytes.

Without a GPU, the CPU buffer-type list of every layer is [extra CPU types..., CPU]
(`src/llama-model.cpp: make_cpu_buft_list`; with a GPU its host type comes first and wins, so
nothing is repacked). `src/llama-model-loader.cpp: select_weight_buft` gives a weight the first
type whose `supports_op` accepts the weight's op (`LLM_TENSOR_INFOS` in src/llama-arch.cpp).
The repack type (`ggml/src/ggml-cpu/repack.cpp: extra_buffer_type::supports_op`) accepts

- `MUL_MAT` with a weight of exactly 2 dimensions (`ggml_n_dims == 2`),
- `MUL_MAT_ID` (MoE experts) with a weight of exactly 3 dimensions,

and only when `ggml_repack_get_optimal_repack_type` finds an interleaved layout for the type,
the CPU features (`engine.plan.cpu_features`) and the row count `ne[1]` (table `RULES`, in the C
code's order). Everything else — token embeddings (`GET_ROWS`), norms, biases, 3-D `MUL_MAT`
weights such as MLA's `attn_k_b` — stays in the plain CPU buffer. The repacked size is
`ggml_nbytes` (no `get_alloc_size`), each tensor padded to 32 bytes (`TENSOR_ALIGNMENT`), so
the CPU_REPACK buffer takes bytes out of the CPU buffer one for one, with one exception: a
tied output (no `output.weight`) is created as a duplicate of `token_embd` with the output's
`MUL_MAT` op; when that is repackable it cannot share the CPU buffer's `token_embd`, so
CPU_REPACK holds an extra copy (gemma3n/gemma4, `TIED_OUTPUT_FIRST`, create the duplicate
first: it goes to CPU_REPACK and token_embd alone stays in the plain buffer).

With mmap (llama.cpp's default) the other weights stay in the mapped file (`CPU_Mapped`, the
file span of its tensors, which may still cover repacked tensors' pages: they are read once
while copying and not touched again); without mmap they are in a `CPU` buffer. Either way
CPU_REPACK is an anonymous allocation of the size computed here.

Not modelled (reported as unknown): builds whose AMX (`__AMX_INT8__` + `__AVX512VNNI__`) or
KleidiAI buffer types come before CPU_REPACK, RISC-V, tensor overrides, `use_extra_bufts =
false`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.core.memory_types import Device
from engine.gguf.arch_table import TIED_OUTPUT_FIRST
from engine.gguf.hparams import BERT_ENCODER_ARCHS, mtp_only
from engine.gguf.inspect import GGUFInfo
from engine.gguf.split_parts import read_model_tensor_dims
from engine.plan.cpu_features import CpuFeatures, detect

#: Weight types with a repacked layout for some CPU (notes §10).
REPACKABLE = ("Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "IQ4_NL", "Q8_0", "MXFP4", "Q1_0")
ALIGNMENT = 32  # TENSOR_ALIGNMENT of the CPU_REPACK buffer type

Rule = tuple[Callable[[CpuFeatures], bool], int, str]  # (features, ne[1] multiple, layout)


def _avx2(f: CpuFeatures) -> bool:
    return f.has("AVX2")


def _i8mm(f: CpuFeatures) -> bool:
    return f.has("NEON") and f.has("MATMUL_INT8")


def _dotprod(f: CpuFeatures) -> bool:
    return f.has("NEON") and f.has("DOTPROD")


#: ggml_repack_get_optimal_repack_type, branch by branch: the first rule whose features are
#: present and whose row multiple divides ne[1] wins; none → not repacked.
RULES: dict[str, tuple[Rule, ...]] = {
    "Q4_0": (
        (lambda f: f.has("AVX2") or (f.has("SVE") and f.has("MATMUL_INT8") and f.sve_bytes == 32), 8, "8x8"),
        (_i8mm, 4, "4x8"),
        (_dotprod, 4, "4x4"),
        (lambda f: f.has("VXE"), 4, "4x4"),
    ),
    "Q4_K": ((_avx2, 8, "8x8"), (_i8mm, 8, "8x8"), (_dotprod, 8, "8x4")),
    "Q2_K": ((lambda f: f.has("AVX512"), 8, "8x8"),),
    "Q5_K": ((_i8mm, 8, "8x8"), (_dotprod, 8, "8x4")),
    "Q6_K": ((_i8mm, 8, "8x8"), (_dotprod, 8, "8x4")),
    "IQ4_NL": ((_avx2, 8, "8x8"), (_dotprod, 4, "4x4")),
    "MXFP4": ((_avx2, 8, "8x8"), (_dotprod, 4, "4x4")),
    "Q8_0": ((_i8mm, 4, "4x8"), (_dotprod, 4, "4x4")),
    "Q1_0": ((_i8mm, 4, "4x8"), (_dotprod, 4, "4x4")),
}

# Names (less ".weight") of LLM_TENSOR_INFOS entries with op MUL_MAT / MUL_MAT_ID, from
# src/llama-arch.cpp (LLM_TENSOR_NAMES formats, "%d" = a number, "@" = "blk.%d.").
_MUL_MAT = """output cls cls.output dense_2 dense_3 fc conf_proj markov_w2 selector_hidden
    altup_proj altup_unembd_proj per_layer_model_proj output_hc_down output_hc_fn output_hc_up
    nextn.post_projection nextn.pre_projection convnext.%d.pw1 convnext.%d.pw2
    posnet.%d.attn_k posnet.%d.attn_output posnet.%d.attn_q posnet.%d.attn_v
    enc.blk.%d.attn_k enc.blk.%d.attn_o enc.blk.%d.attn_q enc.blk.%d.attn_v
    enc.blk.%d.ffn_down enc.blk.%d.ffn_gate enc.blk.%d.ffn_up dec.blk.%d.attn_k
    dec.blk.%d.attn_o dec.blk.%d.attn_q dec.blk.%d.attn_v dec.blk.%d.cross_attn_k
    dec.blk.%d.cross_attn_o dec.blk.%d.cross_attn_q dec.blk.%d.cross_attn_v
    dec.blk.%d.ffn_down dec.blk.%d.ffn_gate dec.blk.%d.ffn_up
    @altup_correct_coef @altup_predict_coef @altup_router @attn_compressor_gate
    @attn_compressor_kv @attn_conv_proj @attn_gate @attn_k @attn_k_b @attn_kv @attn_kv_a_mqa
    @attn_kv_b @attn_output @attn_output_a @attn_output_b @attn_q @attn_q_a @attn_q_b
    @attn_qkv @attn_v @attn_v_b @channel_mix_key @channel_mix_receptance @channel_mix_value
    @ffn_conv_proj @ffn_down @ffn_down_shexp @ffn_gate @ffn_gate_inp @ffn_gate_inp_shexp
    @ffn_gate_shexp @ffn_latent_down @ffn_latent_up @ffn_routed_down @ffn_routed_up @ffn_up
    @ffn_up_shexp @hc_attn_down @hc_attn_fn @hc_attn_inject @hc_attn_up @hc_ffn_down
    @hc_ffn_fn @hc_ffn_inject @hc_ffn_up @indexer.attn_k @indexer.attn_q_b @indexer.k_proj
    @indexer.proj @indexer.q_proj @indexer_compressor_gate @indexer_compressor_kv @inp_gate
    @laurel_l @laurel_r @nextn.eh_proj @nextn.shared_head_head @ple_key @ple_value @proj
    @shortconv.in_proj @shortconv.out_proj @ssm_alpha @ssm_ba @ssm_beta @ssm_dt @ssm_f_a
    @ssm_f_b @ssm_g @ssm_g_a @ssm_g_b @ssm_in @ssm_out @ssm_x @time_mix_a1 @time_mix_a2
    @time_mix_decay_w1 @time_mix_decay_w2 @time_mix_g1 @time_mix_g2 @time_mix_gate
    @time_mix_key @time_mix_output @time_mix_receptance @time_mix_v1 @time_mix_v2
    @time_mix_value @time_mix_w1 @time_mix_w2 @vis_attn_output @vis_attn_qkv @vis_down
    @vis_gate @vis_up"""
_MUL_MAT_ID = """@ffn_down_chexps @ffn_down_exps @ffn_gate_chexps @ffn_gate_exps
    @ffn_gate_up_exps @ffn_up_chexps @ffn_up_exps"""


def _names_re(names: str) -> re.Pattern[str]:
    alts = (re.escape(n.replace("@", "blk.%d.")).replace("%d", r"\d+") for n in names.split())
    return re.compile(r"(?:" + "|".join(alts) + r")\.weight")


_RE_MUL_MAT, _RE_MUL_MAT_ID = _names_re(_MUL_MAT), _names_re(_MUL_MAT_ID)
# Archs without an output matrix at all (those whose output layer is created before token_embd,
# TIED_OUTPUT_FIRST, already hold their tied copy on the host: engine.plan.weights).
_NO_OUTPUT = BERT_ENCODER_ARCHS | {"llama-embed", "bitnet"}


def layout(qtype: str, ne1: int, features: CpuFeatures) -> str | None:
    """The interleaved layout ("8x8", "4x8", …) repack picks for a weight, or None."""
    for ok, multiple, name in RULES.get(qtype, ()):
        if ok(features) and ne1 % multiple == 0:
            return name
    return None


def _n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: index of the last dimension > 1, plus one."""
    return next((i + 1 for i in range(len(ne) - 1, 0, -1) if ne[i] > 1), 1)


def tensor_layout(name: str, qtype: str, ne: tuple[int, ...], features: CpuFeatures) -> str | None:
    """The layout of one GGUF tensor in CPU_REPACK, or None if it stays in the CPU buffer."""
    if qtype not in RULES or len(ne) < 2:
        return None
    if _RE_MUL_MAT.fullmatch(name):
        dims = 2
    elif _RE_MUL_MAT_ID.fullmatch(name):
        dims = 3
    else:
        return None
    return layout(qtype, ne[1], features) if _n_dims(ne) == dims else None


def tensor_bytes(qtype: str, ne: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    n = 1
    for d in ne:
        n *= d
    return n // block * size


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class RepackPlan:
    """The CPU_REPACK buffer of a CPU-only load."""

    features: CpuFeatures
    bytes: int  # the buffer: Σ PAD(ggml_nbytes, 32) of its tensors
    moved: int  # of which the plain CPU weights lose (the rest is an extra tied-output copy)
    tensors: int
    by_type: tuple[tuple[str, str, int, int], ...]  # (type, layout, tensors, bytes)

    def detail(self) -> str:
        kinds = ", ".join(f"{n} {t} as {lay}" for t, lay, n, _b in self.by_type)
        extra = self.bytes - self.moved
        return (
            f"CPU_REPACK: {self.tensors} matrices ({kinds}) copied out of the file into "
            f"interleaved layouts for {self.features.label()}"
            + (
                f", incl. a {extra / 2**20:.2f} MiB copy of the tied token embeddings for the output"
                if extra
                else ""
            )
            + " (32-byte aligned)"
        )


_CACHE: dict[tuple[object, ...], RepackPlan] = {}
HostPart = tuple[frozenset[int], bool]  # (layers on the host, output layer on the host)
_BLOCK = re.compile(r"blk\.(\d+)\.")


def repack_plan(info: GGUFInfo, features: CpuFeatures, part: HostPart | None = None) -> RepackPlan:
    """What a load of `info` puts in CPU_REPACK given the runtime's CPU features: every
    weight without a GPU, or only those of ``part`` (the layers, and whether the output layer,
    left on the host beside remote devices only)."""
    key = (info.path, info.file_bytes, info.tensor_bytes, info.architecture, features, part)
    plan = _CACHE.get(key)
    if plan is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        dims = read_model_tensor_dims(info.path)
        plan = _CACHE[key] = _build(info, dims if part is None else _on_host(dims, part), features)
    return plan


def _on_host(
    dims: dict[str, tuple[str, tuple[int, ...]]], part: HostPart
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors of the host's layers; the non-layer ones only with the output layer there
    (the input layer's are never repacked, and token_embd matters only as a tied output)."""
    layers, output = part
    out = {}
    for name, v in dims.items():
        m = _BLOCK.match(name)
        if (int(m.group(1)) in layers) if m else output:
            out[name] = v
    return out


def _build(info: GGUFInfo, dims: dict[str, tuple[str, tuple[int, ...]]], features: CpuFeatures) -> RepackPlan:
    total = moved = 0
    kinds: dict[tuple[str, str], list[int]] = {}

    def add(qtype: str, lay: str, nbytes: int) -> None:
        k = kinds.setdefault((qtype, lay), [0, 0])
        k[0] += 1
        k[1] += nbytes

    for name, (qtype, ne) in dims.items():
        if mtp_only(info.architecture, name, info.n_layer, info.n_layer_nextn):
            continue  # not loaded without load_mtp (engine.plan.drafting plans them)
        lay = tensor_layout(name, qtype, ne, features)
        if lay:
            nb = _pad(tensor_bytes(qtype, ne))
            total, moved = total + nb, moved + nb
            add(qtype, lay, nb)
    embd = dims.get("token_embd.weight")
    tied = "output.weight" not in dims and info.architecture not in _NO_OUTPUT
    if tied and embd and len(embd[1]) >= 2:
        lay = layout(embd[0], embd[1][1], features) if _n_dims(embd[1]) == 2 else None
        if lay:  # the output's duplicate of token_embd lands in CPU_REPACK
            nb = _pad(tensor_bytes(*embd))
            total += nb
            moved += nb if info.architecture in TIED_OUTPUT_FIRST else 0
            add(embd[0], lay, nb)
    by_type = tuple((t, lay, n, b) for (t, lay), (n, b) in sorted(kinds.items()))
    return RepackPlan(features, total, moved, sum(k[0] for k in kinds.values()), by_type)


def host_repack(
    info: GGUFInfo, ldev: Sequence[str], gpus: Sequence[Device]
) -> tuple[RepackPlan | None, str | None]:
    """(plan, note) for the weights left on the host. Without GPUs, all of them. With a local
    GPU, none: its host buffer type comes first in the CPU list. With remote devices only (RPC
    devices have no host buffer type, ggml-rpc.cpp), the layers placed on the host and the
    output layer there go through the same list as a CPU-only load's."""
    if not gpus:
        return cpu_only_repack(info)
    if any(not g.endpoint for g in gpus):
        return None, None
    layers = frozenset(il for il, dev in enumerate(ldev[:-1]) if dev == "CPU")
    if not layers and ldev[-1] != "CPU":
        return None, None
    return cpu_only_repack(info, (layers, ldev[-1] == "CPU"))


def cpu_only_repack(info: GGUFInfo, part: HostPart | None = None) -> tuple[RepackPlan | None, str | None]:
    """(plan, note) for a load without GPUs (or, with ``part``, the host's share beside remote
    devices): the plan is None when the runtime's CPU features are unknown or another extra
    buffer type would take weights first; the note says why."""
    where = "without a GPU" if part is None else "on the host beside remote devices"
    types = sorted(t for t in REPACKABLE if t in info.weight_types)
    if not types:
        return None, None
    features = detect()
    why = None
    if features is None:
        why = "the CPU features of the llama.cpp build are unknown"
    elif features.has("KLEIDIAI") or (features.has("AMX_INT8") and features.has("AVX512_VNNI")):
        why = (
            f"the build's {'KleidiAI' if features.has('KLEIDIAI') else 'AMX'} buffer type "
            "takes some of them first"
        )
    if why is None and features is not None:
        try:
            plan = repack_plan(info, features, part)
        except (OSError, ValueError):
            why = "the file could not be re-read"
        else:
            return plan, (
                f"{where}, {plan.tensors} matrices move to CPU_REPACK "
                f"({plan.bytes / 2**20:.2f} MiB, repacked for {features.label()}; "
                f"features from {features.source}); with mmap the mapped file "
                "still spans their pages, read once at load"
                if plan.bytes
                else None
            )
    return None, (
        f"{where} llama.cpp may also keep repacked copies of "
        + "/".join(types)
        + f" matrices (CPU_REPACK); not counted here: {why}"
    )
