"""The memory of self-drafting: the MTP heads' context, or a Gemma 4 assistant's, per device.

A drafting context is a second llama_context next to the target's, created by the child from the
target's *resolved* context (engine.child.selfdraft_context.drafting_params), so its plan is
derived from the target's settings and never from the drafter's own defaults. What it adds to the target:

* **weights**: the MTP (nextn) blocks, loaded only with ``load_mtp`` (the target plan leaves them
  out, engine.gguf.hparams.weight_layout), on the devices their layer indices give; an assistant's
  own GGUF instead, placed by its own GPU layers.
* **KV**: the MTP context keeps K/V for the nextn layers only (llama-model.cpp create_memory
  filters ``il >= n_layer()``), at the target's cells and streams. An assistant keeps **none**:
  every one of its layers is a view of the target's K/V.
* **compute**: its own scheduler reserve (the worst-case graph of one nextn block plus the head),
  estimated like the target's from the graph's widths (engine.plan.compute).
* **driver**: on CUDA GPUs, its context's 2 MiB, the 2 MiB rounding of its buffers and the page
  tables of the pinned memory it adds (engine.plan.cuda_driver.drafting_driver).
* **output**: its logits at creation (``n_vocab × n_seq_max``), and once drafting starts the
  hidden-state rows: the drafter's own (masked, one per output) and the target's export of every
  batch row (``n_embd × n_batch``, unmasked), llama-context.cpp output_reserve.

The exact counterpart is the dry run (engine.runtime.exact_plan), split per context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engine.core.memory_types import Allocation, Device, MemoryPlan, MiB, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.gguf.reader import Corrupt
from engine.plan.analytic import geometry, layer_devices, resolve_context, weight_allocations
from engine.plan.assistant_rules import ASSISTANT_ARCH
from engine.plan.compute import phases
from engine.plan.compute_shape import ComputeShape
from engine.plan.context import BLOCKS, Resolved, row_bytes
from engine.plan.cuda_driver import drafting_driver
from engine.plan.weights import mapped_bytes

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "drafter_settings",
    "drafting_plan",
    "mtp_settings",
    "nextn_layers",
    "target_and_drafter",
    "with_drafter",
]


def nextn_layers(info: GGUFInfo) -> range:
    """The MTP blocks' layer indices (the last ``n_layer_nextn`` of ``block_count``)."""
    return range(info.n_layer - info.n_layer_nextn, info.n_layer)


def drafter_settings(target: MemoryPlan) -> PlanSettings:
    """The drafting context's settings: the target's, at the target's resolved context."""
    return target.settings.replace(n_ctx=target.n_ctx, n_rs_seq=0)


def _kv_type(name: str) -> str:
    return name if name in BLOCKS else "f16"


def drafting_plan(
    info: GGUFInfo,
    target: MemoryPlan,
    devices: list[Device],
    assistant: GGUFInfo | None = None,
    assistant_gpu_layers: int = -1,
) -> MemoryPlan:
    """The drafting context's own memory: the model's MTP heads (``assistant`` None) or the
    Gemma 4 assistant's, next to the ``target`` plan of ``info``."""
    s = drafter_settings(target)
    r = resolve_context(s, info.n_ctx_train, info.causal)
    fa_on = target.flash_attn_resolved is not False and s.flash_attn != "off"
    gpus = [d for d in devices if d.kind == "gpu"]
    tk, tv = _kv_type(s.type_k), _kv_type(s.type_v)
    allocs: list[Allocation] = []
    notes: list[str] = []
    if assistant is None:
        geo = geometry(info)
        layers = [il for il in nextn_layers(info) if info.n_head_kv_per_layer[il] > 0]
        ldev = layer_devices(info.n_layer, s, gpus)
        allocs += _nextn_weights(info, ldev, s, gpus, devices)
        kv_dev = ldev if s.offload_kqv else ["CPU"] * len(ldev)
        w_v = max((geo.v_width[il] for il in layers), default=0)
        kv: dict[str, tuple[int, list[int]]] = {}  # one KV buffer per device (llama-kv-cache.cpp)
        for il in layers:
            k = row_bytes(tk, geo.k_width[il]) * r.n_ctx_seq * r.n_stream
            v = (
                0
                if geo.mla
                else row_bytes(tv, w_v if not fa_on else geo.v_width[il]) * r.n_ctx_seq * r.n_stream
            )
            b, ils = kv.get(kv_dev[il], (0, []))
            kv[kv_dev[il]] = (b + k + v, ils + [il])
        for dev, (b, ils) in kv.items():
            widths = "/".join(str(geo.k_width[il]) for il in ils)
            allocs.append(
                Allocation(
                    "kv",
                    dev,
                    b,
                    f"MTP layer{'s' * (len(ils) > 1)} {', '.join(map(str, ils))}: {r.n_ctx_seq} cells × "
                    f"{r.n_stream} streams, K-width {widths} {tk}" + ("" if geo.mla else f", V {tv}"),
                )
            )
        shape = _shape(info, geo.compute, layers, has_swa=False)
        n_swa, out_dev, n_vocab, n_embd = 0, ldev[-1], info.n_vocab, info.n_embd
    else:
        a_settings = s.replace(n_gpu_layers=assistant_gpu_layers)
        allocs += weight_allocations(assistant, a_settings, devices)
        notes.append("no KV of its own: every assistant layer is a view of the target's K/V")
        a_geo = geometry(assistant)
        layers = list(range(assistant.n_layer))
        shape = _shape(assistant, a_geo.compute, layers, has_swa=any(assistant.swa_layers))
        n_swa = target.kv_cells_swa
        out_dev = layer_devices(assistant.n_layer, a_settings, gpus)[-1]
        n_vocab, n_embd = assistant.n_vocab, info.n_embd
    quant = BLOCKS[tk][0] > 1 or BLOCKS[tv][0] > 1
    allocs += _compute(shape, r, fa_on, n_swa, s.kv_unified, out_dev, bool(gpus), quant)
    allocs += output_allocations(n_vocab, n_embd, r.n_seq, r.n_batch)
    target_out = layer_devices(info.n_layer, s, gpus)[-1]
    allocs += drafting_driver(
        target.allocations, target_out, allocs, out_dev, s.load_mode, gpus, same_model=assistant is None
    )
    return MemoryPlan(
        source="analytic",
        settings=s,
        n_ctx=r.n_ctx,
        n_ctx_seq=r.n_ctx_seq,
        kv_cells=r.n_ctx_seq if assistant is None else 0,
        kv_cells_swa=0,
        allocations=tuple(allocs),
        notes=tuple(notes),
        flash_attn_resolved=target.flash_attn_resolved,
    )


def output_allocations(n_vocab: int, n_embd: int, n_seq: int, n_batch: int) -> list[Allocation]:
    """The drafter's output buffer at creation, then the hidden-state rows drafting adds on the
    host: the drafter's masked rows and the target's unmasked export of every batch row."""
    at_creation = 4 * n_vocab * n_seq
    return [
        Allocation("output", "CPU", at_creation, f"drafter logits {n_vocab} vocab × {n_seq} rows f32"),
        Allocation(
            "output",
            "CPU",
            4 * n_embd * (n_seq + n_batch),
            f"hidden-state rows once drafting starts: the drafter's {n_seq} + the target's "
            f"{n_batch} (one per batch row) × {n_embd} f32",
        ),
    ]


def target_and_drafter(target: MemoryPlan, drafting: MemoryPlan, at_load: bool = False) -> MemoryPlan:
    """One plan holding the ``target``'s allocations and its ``drafting`` context's (details
    prefixed "drafter: "), to set against what llama.cpp reports for both contexts. ``at_load``
    leaves out the hidden-state rows that exist only once drafting starts (output_allocations):
    a load's log cannot show them."""
    extra = drafting.allocations
    if at_load:
        later = [a for a in extra if a.component == "output"][1:]
        extra = tuple(a for a in extra if not any(a is b for b in later))
    extra = tuple(dataclasses.replace(a, detail="drafter: " + a.detail) for a in extra)
    return dataclasses.replace(target, allocations=target.allocations + extra)


def creation_output(plan: MemoryPlan) -> int:
    """The part of a drafting plan's output that exists right after context creation (what a
    dry run reports); the rest is allocated at the first draft."""
    return next(a.bytes for a in plan.allocations if a.component == "output")


def _nextn_weights(
    info: GGUFInfo, ldev: list[str], s: PlanSettings, gpus: list[Device], devices: list[Device]
) -> list[Allocation]:
    """The MTP blocks' tensors that load only with load_mtp, per device (the target plan leaves
    them out; engine.gguf.hparams.weight_layout tells them apart per arch). With mmap the host's
    share is what they add to the mapped span (engine.plan.weights): nothing where they already
    lie between the host's other tensors in the file."""
    w = info.weights
    if w is None or not w.mtp_host:
        return []
    by_dev: dict[str, int] = {}
    for il in nextn_layers(info):
        dev = ldev[il]
        by_dev[dev] = by_dev.get(dev, 0) + (w.mtp_cuda[il] if dev != "CPU" else w.mtp_host[il])
    if s.load_mode == "mmap" and "CPU" in by_dev:
        try:
            with_mtp = mapped_bytes(info, s, ldev, gpus, devices, with_mtp=True)[0]
            by_dev["CPU"] = with_mtp - mapped_bytes(info, s, ldev, gpus, devices)[0]
        except (OSError, ValueError, Corrupt):
            pass  # the file is gone or changed: keep the tensors' own bytes
    return [
        Allocation("weights", dev, b, f"MTP (nextn) blocks, loaded with load_mtp ({b / MiB:.2f} MiB)")
        for dev, b in by_dev.items()
        if b
    ]


# The assistant's attention reads the target's K/V and projects only Q: without flash attention
# three fewer query-wide rows per token than a block that computes K and V, one fewer with it
# (fitted against the dry run of the synthetic pair, tests/helpers/mtp_models.py).
# Gated attention (qwen3next family): the drafting block's query carries a gate of the same width,
# two more hidden rows per token live with flash attention (fitted against the dry run).
_GATED_Q = frozenset({"qwen3next", "qwen35", "qwen35moe"})


def _compute(
    shape: ComputeShape,
    r: Resolved,
    fa_on: bool,
    n_swa: int,
    kv_unified: bool,
    out_dev: str,
    has_gpu: bool,
    quant: bool,
) -> list[Allocation]:
    """The drafting context's compute buffer. The target's phases (engine.plan.compute) with what
    differs in a graph of one attention block: its FFN runs after the only attention, so the KQ
    masks are no longer live there."""
    ph = phases(
        dataclasses.replace(shape, arch="drafting"), r, fa_on, n_swa, kv_unified, quant and not has_gpu
    )
    t = -(-min(r.n_ctx, r.n_ubatch) // r.n_seq) * r.n_seq
    cell = 2 if fa_on else 4
    mask = cell * t * (r.n_ctx_seq * shape.has_full + n_swa * shape.has_swa) if shape.q_width else 0
    if "ffn" in ph:
        ph["ffn"] -= mask
    if fa_on and shape.arch in _GATED_Q and "attention" in ph:
        ph["attention"] += 4 * t * 2 * shape.n_embd
    if shape.arch == ASSISTANT_ARCH and "attention" in ph:  # it computes no K/V of its own
        ph["attention"] -= 4 * t * ((1 if fa_on else 3) * shape.q_width + shape.n_embd + 2)
    name, peak = max(ph.items(), key=lambda kv: kv[1])
    detail = f"drafting context: peak in the {name} phase for a {t}-token ubatch × {r.n_seq} seqs (estimate)"
    if not has_gpu:
        return [Allocation("compute", "CPU", peak, detail)]
    # as engine.plan.compute.estimate_compute on CUDA: the inputs and masks stay on the host
    row = 4 * t * shape.n_embd
    return [
        Allocation("compute", out_dev if out_dev != "CPU" else "CUDA0", max(peak - row, row), detail),
        Allocation(
            "compute", "CPU", 2 * row + 4 * t * 8 + mask, "drafting context host compute: masks + input rows"
        ),
    ]


def _shape(info: GGUFInfo, base: ComputeShape, layers: list[int], has_swa: bool) -> ComputeShape:
    """The compute graph's widths for the drafting blocks only: attention and FFN of those
    layers, never a recurrent mixer (the MTP context gets plain KV, no recurrent state)."""
    heads, hk = info.n_head_per_layer, [info.head_dim_k] * info.n_layer
    ff = info.n_ff_per_layer or (0,) * info.n_layer
    q = max((heads[il] * hk[il] for il in layers), default=0)
    ffn = max((ff[il] for il in layers), default=0)
    if info.n_expert:
        ffn = base.ffn_width
    return dataclasses.replace(
        base,
        q_width=q,
        n_head=max((heads[il] for il in layers), default=0),
        has_full=True,
        has_swa=has_swa,
        ffn_width=ffn,
        rec_unit=0,
        rec_state=(0, 0),
        ple_width=0,
    )


DEFAULT_DRAFT_MAX = 8


def mtp_settings(hybrid: bool, settings: PlanSettings, draft_max: int = DEFAULT_DRAFT_MAX) -> PlanSettings:
    """Settings that load the MTP heads; a ``hybrid`` target (recurrent state) keeps
    ``draft_max + 1`` state snapshots so it can roll back rejected draft tokens (n_rs_seq)."""
    return settings.replace(mtp=True, n_rs_seq=draft_max + 1 if hybrid else 0)


def with_drafter(
    plan_fn: Callable[[GGUFInfo, PlanSettings, list[Device]], MemoryPlan],
    assistant: GGUFInfo | None = None,
    assistant_gpu_layers: int = -1,
) -> Callable[[GGUFInfo, PlanSettings, list[Device]], MemoryPlan]:
    """A plan function whose plans hold the target *and* its drafting context (the model's own MTP
    heads, or ``assistant``), so that preflight refuses a pair that does not fit together in the
    same one sentence as a target alone. A model without MTP layers plans as the target alone."""

    def plan(info: GGUFInfo, settings: PlanSettings, devices: list[Device]) -> MemoryPlan:
        target = plan_fn(info, settings, devices)
        if assistant is None and not info.n_layer_nextn:
            return target
        return target_and_drafter(
            target, drafting_plan(info, target, devices, assistant, assistant_gpu_layers)
        )

    return plan
