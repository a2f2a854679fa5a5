"""Place the compute buffers of a CUDA load: GPU buffer(s) and the CUDA_Host buffer.

engine.plan.compute_cuda holds the terms; this module gathers the model facts they need once
per model (widest K/V rows, the largest weight matrix of each layer as CUDA pads it, the
output matrix) and turns them into per-device allocations, with the partial-offload
allowance stated in the plan notes. The CUDA terms and the replay follow standard attention +
FFN layers; a model with other layers (`unmodelled`: recurrent, MLA, sparse or lightning
attention, per-layer inputs) gets the stated bound instead, never a replay over matrices it
does not have, and a note that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.core.memory_types import MiB
from engine.plan import compute_cuda as cc
from engine.plan.compute import phases
from engine.plan.compute_replay import (
    EXACT_ARCHS,
    OP_OFFLOAD_MIN_BATCH,
    REPLAY_ARCHS,
    SAFETY,
    LayerCache,
    LayerWeights,
    ReplayGraph,
    replay,
    safety,
)
from engine.plan.context import BLOCKS, Resolved
from engine.plan.cpu_moe import CUDA_COMPUTE_NOTE, compute_layers

if TYPE_CHECKING:
    from engine.plan.compute_shape import ComputeShape
    from engine.plan.kv_sizes import ModelGeometry

_MODELS: dict[tuple[Any, ...], tuple[cc.CudaModel, _Matrices]] = {}


_ROLES = {
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_output": "o",
    "ffn_gate": "gate",
    "ffn_gate_exps": "gate",
    "ffn_up": "up",
    "ffn_up_exps": "up",
    "ffn_down": "down",
    "ffn_down_exps": "down",
    "ffn_gate_inp": "router",
}


@dataclass(frozen=True)
class _Matrices:
    largest: tuple[int, ...]  # per layer: CUDA bytes of its largest tensor
    output: int
    roles: tuple[LayerWeights, ...] | None  # per layer, by role (None: see _layer_roles)
    qk_norm: bool  # attn_q_norm tensors (qwen3, gemma3): Q and K are normed into new tensors
    post_norm: bool  # post_attention_norm (gemma2/3): sandwich norms after attention and FFN
    standard: bool  # every layer tensor is one the exact replay builds (no biases, no extras)
    rope_freqs: int = 0  # rope_freqs.weight: rope's third source in every layer


def _matrices(info: Any, geo: ModelGeometry) -> _Matrices:
    """CUDA bytes of each layer's matrices and of the output matrix, from the header (cached
    per file). Without a readable file: half of each layer as its largest matrix (an upper
    bound for every transformer layer we know: the largest matrix is at most ~40 %)."""
    w = geo.weights
    n = geo.n_layer
    layers = [0] * n
    roles: list[dict[str, int]] = [{} for _ in range(n)]
    out = freqs = 0
    names: set[str] = set()
    try:
        from engine.gguf.hparams import cuda_bytes
        from engine.gguf.split_parts import read_model_header

        (_meta, _types, tensors), _size = read_model_header(info.path, info.file_bytes)
        for name, qtype, _n, nbytes, _off, ne0 in tensors:
            c = cuda_bytes(qtype, ne0, nbytes)
            if name.startswith("blk."):
                _blk, part, rest = name.split(".", 2)
                if part.isdigit() and int(part) < n:
                    il = int(part)
                    layers[il] = max(layers[il], c)
                    base = rest.rsplit(".", 1)[0]
                    names.add(base)
                    if base in _ROLES and rest.endswith(".weight"):
                        roles[il][_ROLES[base]] = c
            elif name in ("output.weight",) or (name == "token_embd.weight" and w and w.tied_output):
                out = max(out, c)
            elif name == "rope_freqs.weight":
                freqs = c
    except Exception:  # noqa: BLE001 - no file (tests build GGUFInfo by hand): bound it
        if w is not None:
            layers = [b // 2 for b in w.layers_cuda]
            out = w.output_cuda or w.token_embd_cuda
        return _Matrices(tuple(layers), out, None, False, False, False)
    return _Matrices(
        tuple(layers),
        out,
        _layer_roles(roles),
        "attn_q_norm" in names,
        "post_attention_norm" in names,
        names <= _STANDARD,
        freqs,
    )


#: The layer tensors of the llama, qwen3, gemma3 and qwen3moe graphs that engine.plan.compute_replay
#: follows node for node (weights only: a bias or any other tensor adds nodes it does not build).
_STANDARD = frozenset(
    {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm"}
    | {"post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"}
    | {"ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}
)


_NEEDED = frozenset({"q", "k", "v", "o", "gate", "up", "down"})


def _layer_roles(roles: list[dict[str, int]]) -> tuple[LayerWeights, ...] | None:
    """The replay's per-layer matrices, or None unless every layer is the standard
    attention + gated FFN layer the replay builds: recurrent, delta-net, shortconv or
    fused-QKV layers (qwen35, mamba, lfm2, phi3, …) have none of Q/K/V/O or of the FFN
    triple, and a replay over zeros there would place no weight copy at all."""
    if not roles or any(not _NEEDED <= r.keys() for r in roles):
        return None
    return tuple(LayerWeights(**r) for r in roles)


def unmodelled(shape: ComputeShape) -> list[str]:
    """What a model has beyond the standard attention + FFN layers the CUDA terms were derived
    and measured on (empty: modelled)."""
    odd = {
        "recurrent layers": shape.rec_unit or any(shape.rec_state),
        "MLA attention": shape.mla_rank,
        "sparse attention": shape.dsa_top_k
        or shape.dsv4_ratio
        or shape.msa[0]
        or shape.qsa[0]
        or shape.kpool_rows,
        "lightning attention": shape.la_heads,
        "per-layer inputs": shape.ple_width,
    }
    return [k for k, v in odd.items() if v]


def cuda_model(info: Any, geo: ModelGeometry) -> tuple[cc.CudaModel, _Matrices]:
    key = (info.path, info.file_bytes, info.tensor_bytes, geo.n_layer)
    m = _MODELS.get(key)
    if m is None:
        if len(_MODELS) > 32:
            _MODELS.clear()
        mats = _matrices(info, geo)
        kvl = geo.kv_layers
        m = _MODELS[key] = (
            cc.CudaModel(
                k_width=max((geo.k_width[il] for il in kvl), default=0),
                v_width=max((geo.v_width[il] for il in kvl), default=0),
                head_dim=max((geo.head_k[il] for il in kvl), default=0),
                max_layer_matrix=mats.largest,
                output_matrix=mats.output,
            ),
            mats,
        )
    return m


def _replay_graph(info: Any, geo: ModelGeometry, mats: _Matrices, cg: cc.CudaGraph) -> ReplayGraph | None:
    """The tensors engine.plan.compute_replay replays, for the families it follows."""
    if geo.arch not in REPLAY_ARCHS or mats.roles is None or len(geo.kv_layers) != geo.n_layer:
        return None
    r, fa_on, n_swa_cells = cg.r, cg.fa_on, cg.n_swa_cells
    t = cg.tokens
    t_out = min(t, r.n_outputs_max)
    quant, tb = cg.quant, cg.type_bytes
    cb = 2 if fa_on else 4
    used = info.n_expert_used if info.n_expert else 0
    head_k, head_v = max(geo.head_k), max(geo.head_v)  # llama_kv_cache: attn_rot_k / attn_rot_v
    caches = []
    for il in range(geo.n_layer):
        swa = geo.swa[il] and geo.iswa
        cells = n_swa_cells if swa else r.n_ctx_seq
        kw, vw = geo.k_width[il], geo.v_width[il]
        ff = used * info.n_ff_expert if used else (info.n_ff_per_layer or (0,) * geo.n_layer)[il]
        caches.append(
            LayerCache(
                k=int(cells * r.n_stream * kw * tb[0]) + _row_pad(cg.types[0], geo.head_k[il]),
                v=int(cells * r.n_stream * vw * tb[1]) + _row_pad(cg.types[1], geo.head_v[il]),
                f16=2 * cells * r.n_stream * (kw * quant[0] + vw * quant[1]) if fa_on else 0,
                kq=4 * t * cells * geo.n_head[il],
                mask="swa" if swa else "full",
                rk=4 * t * kw,
                rf=4 * t * ff,
            )
        )
    return ReplayGraph(
        tokens=t,
        n_embd=geo.n_embd,
        rq=4 * t * geo.compute.q_width,
        head_dim=head_k,
        out_rows=4 * t_out * geo.n_embd,
        logits=4 * t_out * geo.n_vocab,
        output_matrix=mats.output,
        masks={"full": cb * t * r.n_ctx_seq, "swa": cb * t * n_swa_cells},
        flash_attn=fa_on,
        rotate=(quant[0] and head_k % 64 == 0, quant[1] and head_v % 64 == 0),
        qk_norm=mats.qk_norm,
        post_norm=mats.post_norm,
        experts=(info.n_expert, used) if used else None,
        weights=mats.roles,
        caches=tuple(caches),
        iswa=geo.iswa,
        rope_freqs=mats.rope_freqs,
        exact=geo.arch in EXACT_ARCHS and mats.standard and t >= OP_OFFLOAD_MIN_BATCH,
    )


def _row_pad(qtype: str, ne0: int) -> int:
    """What ggml-cuda adds to a quantized tensor's size in its buffer when rows are not a
    multiple of 512 (ggml_backend_cuda_buffer_type_get_alloc_size, MATRIX_ROW_PADDING): a
    K or V copy is a per-head view, so its rows are one head wide."""
    blk, nbytes = BLOCKS[qtype]
    return (512 - ne0 % 512) // blk * nbytes if blk > 1 and ne0 % 512 else 0


def cuda_compute(
    info: Any,
    geo: ModelGeometry,
    r: Resolved,
    fa_on: bool,
    n_swa_cells: int,
    types: tuple[str, str],
    ldev: list[str],
    cpu_est: list[tuple[str, int, str]],
    notes: list[str],
    state_bytes: int = 0,
    n_cpu_moe: int = 0,
) -> list[tuple[str, int, str]]:
    """[(device, bytes, detail)] for a load with CUDA GPUs (ldev: device per layer, the last
    entry the output layer). cpu_est is the CPU-calibrated estimate, whose FFN, recurrent and
    no-flash-attention phases (less the host-side input row) stand in where this module has
    no CUDA-specific term; for layers it does not model (`unmodelled`) its attention phase
    stands in too. state_bytes: one recurrent layer's state tensors, every cell (r + s).
    n_cpu_moe: the routed experts of layers below it are on the host (`--n-cpu-moe`). The
    replay follows that exactly; elsewhere those layers count as wholly on the CPU
    (engine.plan.cpu_moe's stated bound, with its note)."""
    shape = geo.compute
    odd = unmodelled(shape)
    cm, mats = cuda_model(info, geo)
    cg = cc.CudaGraph(shape, cm, r, fa_on, n_swa_cells, types)
    experts = frozenset(il for il in range(min(n_cpu_moe, geo.n_layer)) if ldev[il] != "CPU")
    single = len({d for d in ldev if d != "CPU"}) <= 1
    g = _replay_graph(info, geo, mats, cg) if single else None
    exact = g is not None and g.exact and (not experts or g.experts is not None)
    if experts and not exact:
        ldev = compute_layers(ldev, n_cpu_moe)
        notes.append(CUDA_COMPUTE_NOTE)
    t = cg.tokens
    row = 4 * t * shape.n_embd
    gpus = sorted({d for d in ldev if d != "CPU"}) or ["CUDA0"]
    cpu_layers = [il for il, d in enumerate(ldev[:-1]) if d == "CPU"]
    out_cpu = ldev[-1] == "CPU"
    calib = {
        k: max(v - row, row)
        for k, v in phases(shape, r, fa_on, n_swa_cells, False).items()
        if k not in ("output",) and not (fa_on and k == "attention" and not odd)
    }
    rec_cpu = set(cpu_layers) & set(geo.rec_layers)
    res: list[tuple[str, int, str]] = []
    offloaded = bool(cpu_layers or out_cpu or experts)
    if g is not None and exact:  # llama.cpp's graph node for node: the replay is the buffer
        played = replay(g, frozenset(cpu_layers), out_cpu, experts)
        split = "split graph (op_offload copies of the host weights and K/V)" if offloaded else "graph"
        res.append((gpus[0], played, f"CUDA: ggml-alloc replay {played / MiB:.2f} MiB of the {split}"))
    for i, dev in enumerate(gpus if not exact else []):
        ph = cc.gpu_full(cg)
        if dev != (ldev[-1] if not out_cpu else gpus[0]):
            ph.pop("output", None)
        ph.update({f"{k} (CPU calibration)": v for k, v in calib.items()})
        extra = cc.moe_extra(cg)
        peak = max(ph.values()) + extra
        detail = "CUDA: " + cc.describe(ph) + f" for a {t}-token ubatch"
        if i == 0 and offloaded:  # op_offload runs on the first (highest-priority) GPU
            full = peak
            ph.update(cc.partial_offload_phases(cg, cpu_layers, out_cpu, state_bytes if rec_cpu else 0))
            extra += cc.allowance(cg, cpu_layers, out_cpu)
            peak = max(ph.values()) + extra
            detail = "CUDA: " + cc.describe(ph) + f" for a {t}-token ubatch"
            if g is not None:
                # two estimates that never fell short on the H200 grids: take the smaller
                cpu = frozenset(cpu_layers)
                played = replay(g, cpu, out_cpu)
                margin = safety(g, cpu, geo.n_layer - len(cpu_layers))
                detail += (
                    f" + {extra / MiB:.0f} MiB allowance = {peak / MiB:.2f} MiB; ggml-alloc replay "
                    f"{played / MiB:.2f} MiB + {margin / MiB:.0f} MiB safety: the smaller"
                )
                peak = min(peak, max(full, played + margin))
                extra = 0
        if extra:
            detail += f" + {extra / MiB:.0f} MiB allowance (CPU layers / routed experts)"
        res.append((dev, peak, detail))
    if exact and offloaded:
        notes.append(
            "compute: with layers (or routed experts) on the CPU, op_offload copies those weights "
            "and the CPU layers' K/V into the GPU compute buffer; it is sized by replaying "
            "llama.cpp's scheduler and ggml-alloc over "
            f"the {geo.arch} graph node for node, with no safety term (within 0.01 MiB of all 609 "
            "H200 dry runs with layers on the CPU; the exact plan is authoritative)"
        )
    elif g is not None and offloaded:
        notes.append(
            "compute: with layers on the CPU, op_offload copies their weights and K/V into the "
            "GPU compute buffer; it is sized as the smaller of ggml-alloc replayed over those "
            f"copies plus a safety term ({SAFETY}) and the live tensors plus "
            f"{cc.PARTIAL_ALLOWANCE_ROWS} hidden rows per token, because this model's layers have "
            "tensors (or a ubatch under 32 tokens) the replay does not follow node for node "
            "(the exact plan is authoritative)"
        )
    elif offloaded:
        notes.append(
            "compute: with layers on the CPU, op_offload copies their weights and K/V "
            "into the GPU compute buffer; where ggml-alloc places them varies, so the "
            f"GPU compute buffer includes a safety allowance of {cc.PARTIAL_ALLOWANCE_ROWS} "
            "hidden rows per token (the exact plan is authoritative)"
        )
    if odd:
        notes.append(
            f"compute: the CUDA terms follow llama.cpp's standard attention layers (measured on "
            f"{', '.join(sorted(REPLAY_ARCHS))}); {geo.arch} has {' and '.join(odd)}, so its GPU "
            "compute buffer is a bound: the largest of those terms and every CPU-calibrated phase"
            + (", plus op_offload's copy of a CPU layer's whole recurrent state" if rec_cpu else "")
            + " (the exact plan is authoritative)"
        )
    host = cc.host_bytes(cg)
    res.append(("CPU", host, "CUDA_Host: graph inputs (token embeddings, KQ masks, indices)"))
    del cpu_est
    return res
