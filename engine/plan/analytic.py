"""Predict what llama.cpp (0c1e570) allocates for a model and settings, without loading it.

The GUI recomputes this on every slider move, so it must be fast (well under 16 ms): all
per-model work (per-layer K/V widths, which layers hold KV or recurrent state, weight bytes per
layer) is derived once into a `ModelGeometry` and cached; a plan is then a few loops over layers.
Formulas follow llama.cpp's source: the context's resolution (the `llama_context` constructor,
src/llama-context.cpp), the KV cache (src/llama-kv-cache.cpp, in `engine.plan.kv_sizes`), recurrent
state (src/llama-memory-recurrent.cpp), the output buffer (`llama_context::output_reserve`) and
where weights go (`llama_model_base::load_tensors`, src/llama-model.cpp). KV and recurrent bytes
equal llama.cpp's `size =` tensor sums; compute buffers have no closed form (they are the
scheduler's reservation of a graph) and come from `engine.plan.compute`. On CUDA GPUs a last component, "driver", is memory no llama.cpp buffer
holds but the GPU loses all the same (2 MiB cudaMalloc pages, page tables of pinned host memory,
the context: `engine.plan.cuda_driver`), computed from the buffers above.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.memory_types import Allocation, Device, MemoryPlan, MiB, PlanSettings
from engine.gguf.hparams import NO_MEMORY_ARCHS
from engine.gguf.inspect import GGUFInfo
from engine.plan.compute import estimate_compute, phases
from engine.plan.compute_cuda import has_fa_kernel
from engine.plan.compute_placement import cuda_compute
from engine.plan.compute_rpc import SCHED_MAX_COPIES, pipeline_parallel, rpc_compute
from engine.plan.context import BLOCKS, CacheSize, Resolved, resolve_context, row_bytes
from engine.plan.cuda_driver import driver_allocations
from engine.plan.kv_sizes import ModelGeometry, geometry, kv_caches
from engine.plan.sparse_caches import dsv4_states, ple_conv_state, unmodelled_notes
from engine.plan.weights import place_weights

__all__ = [
    "BLOCKS",
    "CacheSize",
    "LLAMA_MAX_SEQ",
    "ModelGeometry",
    "RS_ROLLBACK_ARCHS",
    "Resolved",
    "analytic_plan",
    "cuda_driver_of",
    "geometry",
    "kv_caches",
    "layer_devices",
    "resolve_context",
    "weight_allocations",
    "row_bytes",
    "weights_cache_type",
]

RS_ROLLBACK_ARCHS = frozenset(
    {
        "kimi-k3",
        "qwen35",
        "qwen35moe",
        "qwen4exp",
        "deepseek4",
        "glm5-next",
        "nemotron_h",
        "nemotron_h_moe",
        "lfm2",
        "lfm2moe",
        "bailingmoe3",
    }
)
LLAMA_MAX_SEQ = 256


# --- devices ------------------------------------------------------------------------------


def _gpus(settings: PlanSettings, devices: Sequence[Device]) -> list[Device]:
    gpus = [d for d in devices if d.kind == "gpu"]
    if settings.split_mode == "none":
        ok = 0 <= settings.main_gpu < len(gpus)
        return [gpus[settings.main_gpu]] if ok else []
    return gpus


def layer_devices(n_layer: int, settings: PlanSettings, gpus: Sequence[Device]) -> list[str]:
    """§10 layer_dev for il in 0..n_layer (the last entry is the output layer)."""
    if not gpus:
        return ["CPU"] * (n_layer + 1)
    ngl = n_layer + 1 if settings.n_gpu_layers < 0 else settings.n_gpu_layers
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    split = [float(x) for x in settings.tensor_split[: len(gpus)]]
    if not any(split):
        split = [float(max(g.free_bytes, 1)) for g in gpus]
    split += [0.0] * (len(gpus) - len(split))
    import numpy as np  # float32 like llama.cpp; imported here, not at start-up (see engine.gguf.reader)

    cum = np.cumsum(np.asarray(split, dtype=np.float32))
    cum /= cum[-1]
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append("CPU")
        else:
            frac = np.float32(il - start) / np.float32(act)
            idx = int(np.searchsorted(cum, frac, side="right"))
            out.append(gpus[min(idx, len(gpus) - 1)].name)
    return out


# --- the plan -----------------------------------------------------------------------------


def weights_cache_type(info: GGUFInfo) -> str:
    """ "bf16" when the weights are mostly bf16 (trained in bf16: f16 K/V can overflow), else
    "f16". By bytes; a quantized file whose float tensors are bf16 counts when bf16 outweighs
    f16 and is at least a tenth of the file."""
    bf16, f16 = info.weight_types.get("BF16", 0), info.weight_types.get("F16", 0)
    return "bf16" if bf16 > f16 and bf16 * 10 >= max(1, info.tensor_bytes) else "f16"


def _cache_type(name: str, notes: list[str], which: str) -> str:
    if name in BLOCKS:
        return name
    notes.append(f"unknown {which} cache type {name!r}: sized as f16")
    return "f16"


def analytic_plan(info: GGUFInfo, settings: PlanSettings, devices: list[Device]) -> MemoryPlan:
    """Memory per device and component predicted from the GGUF metadata alone."""
    geo = geometry(info)
    notes: list[str] = []
    r = resolve_context(settings, info.n_ctx_train, info.causal)
    default = weights_cache_type(info)  # an empty type means "follow the weights"
    tk = _cache_type(settings.type_k or default, notes, "K")
    tv = _cache_type(settings.type_v or default, notes, "V")
    settings_kv = settings.replace(type_k=tk, type_v=tv)
    fa = settings.flash_attn
    if fa == "auto" and (tv not in ("f32", "f16", "bf16") or settings.split_mode == "tensor"):
        fa = "on"  # forced before the probe (§1)
    v_trans = fa == "off"
    gpus = _gpus(settings, devices)
    ldev = layer_devices(geo.n_layer, settings, gpus)
    kv_dev = ldev if settings.offload_kqv else ["CPU"] * len(ldev)
    fa_compute = fa != "off"
    if fa == "auto":
        attn = (
            il
            for il, kvh in enumerate(info.n_head_kv_per_layer)  # shared-KV layers too
            if kvh and il not in geo.rec_layers
        )
        bad = [
            il
            for il in attn
            if ldev[il].startswith("CUDA")
            and not has_fa_kernel(
                geo.head_k[il], geo.head_v[il], geo.n_head[il] // max(1, info.n_head_kv_per_layer[il])
            )
        ]
        if bad:  # the probe (§1) will find FLASH_ATTN_EXT on the CPU and switch FA off
            fa_compute = False
            notes.append(
                f"flash attention auto: CUDA has no kernel for head size "
                f"{geo.head_k[bad[0]]}/{geo.head_v[bad[0]]}, so it resolves to off "
                "(V stays untransposed; compute sized without flash attention)"
            )
    allocs: list[Allocation] = []
    no_mem = geo.arch in NO_MEMORY_ARCHS
    # KV cache (§2-§5): per kept layer, cells per stream × streams.
    caches, n_swa_cells = kv_caches(info, settings_kv, r, v_trans)
    if geo.iswa:
        n_unified = r.n_seq if settings.kv_unified and not info.sparse else 1  # DSV4: per seq
        notes.append(
            "SWA layers use a full-size cache (swa_full)"
            if settings.swa_full
            else f"SWA layers: window {info.n_swa}"
            + (f" × {r.n_seq} sequences" if n_unified > 1 else "")
            + f" + ubatch {r.n_ubatch} → {n_swa_cells} cells"
        )
    for c in caches:
        for dev, (n, k, v) in c.per_device(kv_dev).items():
            detail = (
                f"{c.label or c.kind}: {n} layers × {c.cells} cells × {c.streams} "
                f"streams, K-width {'/'.join(map(str, c.k_widths))} {c.type_k} = "
                f"{k / MiB:.2f} MiB, "
                + (
                    ("no V (MLA: K only)" if geo.mla else "no V (K only)")
                    if c.k_only
                    else f"V {c.type_v} = {v / MiB:.2f} MiB"
                )
            )
            allocs.append(Allocation("kv", dev, k + v, detail))
    layers = () if no_mem else geo.kv_layers
    w_v_max = max(geo.v_width) if geo.v_width else 0
    if v_trans and any(geo.v_width[il] != w_v_max for il in layers):
        notes.append(f"flash attention off: every layer's V is padded to the widest ({w_v_max})")

    # Recurrent state (§6): f32, per sequence, never per context cell.
    rs_seq = settings.n_rs_seq if geo.arch in RS_ROLLBACK_ARCHS else 0
    rows = r.n_seq * (1 + rs_seq)
    seqs = f" f32 × {r.n_seq} seqs" + (f" × (1 + {rs_seq} rollback)" if rs_seq else "")
    if geo.rec_layers and not no_mem:
        allocs += _per_layer_state(
            geo.rec_layers,
            4 * (geo.n_embd_r + geo.n_embd_s) * rows,
            kv_dev,
            "",
            f" × (R {geo.n_embd_r} + S {geo.n_embd_s}){seqs}",
        )
        if rows > 1:
            one = 4 * (geo.n_embd_r + geo.n_embd_s) * len(geo.rec_layers)
            notes.append(_state_rows_note(r.n_seq, rs_seq, one))
    ple_layers, ple_bytes = ple_conv_state(info, r, rs_seq)  # qwen4exp: the "P" row (§6)
    allocs += _per_layer_state(ple_layers, ple_bytes, kv_dev, "PLE convolution state (P)", seqs)
    for st in dsv4_states(info, r, rs_seq):  # f32 compressor states (§7), per sequence
        allocs += _per_layer_state(
            st.layers,
            st.layer_bytes,
            kv_dev,
            f"DSV4 {st.name} compressor state",
            f" × 2 × {st.n_embd_state} × {st.state_size}{seqs}",
        )
    if settings.n_rs_seq and geo.rec_layers and not rs_seq:
        notes.append(f"{geo.arch} has no state rollback: n_rs_seq is ignored")

    # Output buffer (§8): logits for n_seq_max rows at context creation, on the host.
    out_bytes = 4 * geo.n_vocab * r.n_seq
    allocs.append(
        Allocation(
            "output",
            "CPU",
            out_bytes,
            f"logits {geo.n_vocab} vocab × {r.n_seq} rows f32 (grows with outputs requested per batch)",
        )
    )

    # Weights (§10), in the settings' load mode (engine.plan.weights).
    weights, weight_notes, moe_note = place_weights(info, geo, settings, ldev, gpus, devices)
    allocs += weights
    notes += weight_notes

    # Compute (§9): the CPU calibration, or on CUDA what the scheduler allocates there.
    quant_k, quant_v = BLOCKS[tk][0] > 1, BLOCKS[tv][0] > 1
    ests = estimate_compute(
        geo.compute,
        r,
        fa_compute,
        n_swa_cells,
        settings.kv_unified,
        ldev[-1] if gpus else "CPU",
        bool(gpus),
        quant_k or quant_v,
    )
    held = [g for g in gpus if g.name in ldev]
    rpc_cpu = bool(held) and all(g.endpoint and g.host_layout for g in held)
    if gpus and all(g.name.startswith("CUDA") for g in gpus):
        state = 0 if no_mem else 4 * (geo.n_embd_r + geo.n_embd_s) * rows
        ests = cuda_compute(
            info,
            geo,
            r,
            fa_compute,
            n_swa_cells,
            (tk, tv),
            ldev,
            ests,
            notes,
            state,
            n_cpu_moe=settings.n_cpu_moe if moe_note else 0,
        )
    elif rpc_cpu:  # CPU-backed workers: engine.plan.compute_rpc
        copies = SCHED_MAX_COPIES if pipeline_parallel(settings, geo.n_layer, gpus) else 1
        ests = rpc_compute(geo, r, fa_compute, n_swa_cells, settings.kv_unified, (tk, tv), ldev, copies)
    for dev, b, detail in ests:
        allocs.append(Allocation("compute", dev, b, detail))
    if any(g.endpoint for g in gpus) and not rpc_cpu:
        allocs += _split_compute(geo, r, fa_compute, n_swa_cells, settings.kv_unified, ldev, ests)
    # What the CUDA driver takes beyond these buffers (engine.plan.cuda_driver).
    allocs += driver_allocations(allocs, settings.load_mode, gpus, ldev[-1])

    if settings.split_mode == "tensor" and len(gpus) > 1:
        notes.append(
            "tensor split: llama.cpp divides every weight and the KV cache across the GPUs "
            "by heads; this plan places whole layers by the split ratios instead (not yet "
            "measured on a multi-GPU machine), so per-GPU figures are approximate"
        )
    if r.n_ctx_seq > info.n_ctx_train:
        notes.append(f"context per sequence {r.n_ctx_seq} exceeds the training context {info.n_ctx_train}")
    if fa == "auto" and fa_compute:
        notes.append("flash attention auto: sized as enabled (the probe decides at load)")
    notes += unmodelled_notes(info, settings, fa_compute)
    return MemoryPlan(
        source="analytic",
        settings=settings,
        n_ctx=r.n_ctx,
        n_ctx_seq=r.n_ctx_seq,
        kv_cells=r.n_ctx_seq if layers else 0,
        kv_cells_swa=n_swa_cells if layers else 0,
        allocations=tuple(allocs),
        notes=tuple(notes),
        flash_attn_resolved=(None if fa_compute else False) if fa == "auto" else fa == "on",
    )


def _state_rows_note(n_seq: int, rs_seq: int, one: int) -> str:
    """Why the recurrent state has more than one row per layer, in the words of its cause:
    llama.cpp keeps n_seq_max × (1 + n_rs_seq) rows (llama-memory-recurrent.cpp), one per
    sequence and one per rollback snapshot (n_rs_seq: drafting on a hybrid target)."""
    causes = [f"{n_seq} parallel sequences"] if n_seq > 1 else []
    causes += [f"rollback snapshots (n_rs_seq = {rs_seq})"] if rs_seq else []
    factors = [str(n_seq)] if n_seq > 1 else []
    factors += [f"(1 + {rs_seq})" if factors else f"1 + {rs_seq}"] if rs_seq else []
    rows = n_seq * (1 + rs_seq)
    how = " × ".join(factors) + (f" = {rows}" if len(factors) > 1 or rs_seq else "")
    return f"{' and '.join(causes)} multiply the recurrent state ({how} × {one / MiB:.2f} MiB)"


def weight_allocations(info: GGUFInfo, settings: PlanSettings, devices: list[Device]) -> list[Allocation]:
    """The weights alone, placed as :func:`analytic_plan` places them: a drafter's own file (a
    Gemma 4 assistant) needs its weights but none of a context of its own."""
    gpus = _gpus(settings, devices)
    geo = geometry(info)
    return place_weights(info, geo, settings, layer_devices(geo.n_layer, settings, gpus), gpus, devices)[0]


def cuda_driver_of(
    info: GGUFInfo, settings: PlanSettings, devices: list[Device], allocations: Sequence[Allocation]
) -> list[Allocation]:
    """The CUDA driver term of another plan's ``allocations`` (one per llama.cpp buffer) of
    ``info`` under ``settings``, placed as :func:`analytic_plan` places them: the exact plan's."""
    gpus = _gpus(settings, devices)
    ldev = layer_devices(geometry(info).n_layer, settings, gpus)
    return driver_allocations(allocations, settings.load_mode, gpus, ldev[-1])


def _split_compute(
    geo: ModelGeometry,
    r: Resolved,
    fa_on: bool,
    n_swa_cells: int,
    kv_unified: bool,
    ldev: list[str],
    ests: list[tuple[str, int, str]],
) -> list[Allocation]:
    """With llama.cpp RPC workers, every device that holds layers runs its own part of the graph
    and the scheduler reserves a compute buffer on each, not only on the output layer's device.
    Sized as the peak of the layer phases, for workers that lend a GPU (CPU-backed workers have
    the bound of engine.plan.compute_rpc); an estimate: `plan --exact` asks llama.cpp's dry run,
    and with two or more such workers llama.cpp's pipeline parallelism adds four copies of each
    split's inputs that this does not count."""
    ph = phases(geo.compute, r, fa_on, n_swa_cells, kv_unified)
    peak = max((v for k, v in ph.items() if k != "output"), default=0)
    placed = {dev for dev, _b, _d in ests}
    return [
        Allocation(
            "compute",
            dev,
            peak,
            "estimate: this device's layers' part of the graph (peak of the attention and FFN "
            "phases); plan --exact has llama.cpp's own figure",
        )
        for dev in dict.fromkeys(ldev)
        if dev != "CPU" and dev not in placed
    ]


def _per_layer_state(
    layers: Sequence[int], layer_bytes: int, kv_dev: Sequence[str], name: str, each: str
) -> list[Allocation]:
    """Recurrent-kind buffers of equal size per layer, summed per device (on the layer's
    device when K/V are offloaded, else the host)."""
    count: dict[str, int] = {}
    for il in layers:
        count[kv_dev[il]] = count.get(kv_dev[il], 0) + 1
    return [
        Allocation("recurrent", dev, n * layer_bytes, (f"{name}: " if name else "") + f"{n} layers{each}")
        for dev, n in count.items()
    ]
