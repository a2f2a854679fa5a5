"""Place the compute buffers of a CUDA load: GPU buffer(s) and the CUDA_Host buffer.

engine.plan.compute_cuda holds the terms; this module gathers the model facts they need once
per model (widest K/V rows, the largest weight matrix of each layer as CUDA pads it, the
output matrix) and turns them into per-device allocations, with the partial-offload
allowance stated in the plan notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.core.memory_types import MiB
from engine.plan import compute_cuda as cc
from engine.plan.compute import phases
from engine.plan.context import BLOCKS, Resolved

if TYPE_CHECKING:
    from engine.plan.kv_sizes import ModelGeometry

_MODELS: dict[tuple[Any, ...], cc.CudaModel] = {}


def _largest_matrices(info: Any, geo: ModelGeometry) -> tuple[tuple[int, ...], int]:
    """CUDA bytes of each layer's largest tensor and of the output matrix, from the header
    (cached per file). Without a readable file: half of each layer (an upper bound for
    every transformer layer we know: the largest matrix is at most ~40 %)."""
    w = geo.weights
    n = geo.n_layer
    layers = [0] * n
    out = 0
    try:
        from engine.gguf.hparams import _cuda_size
        from engine.gguf.split_parts import read_model_header

        (_meta, _types, tensors), _size = read_model_header(info.path, info.file_bytes)
        for name, qtype, _n, nbytes, _off, ne0 in tensors:
            c = _cuda_size(qtype, ne0, nbytes)
            if name.startswith("blk."):
                part = name.split(".", 2)[1]
                if part.isdigit() and int(part) < n:
                    layers[int(part)] = max(layers[int(part)], c)
            elif name in ("output.weight",) or (name == "token_embd.weight" and w and w.tied_output):
                out = max(out, c)
    except Exception:  # noqa: BLE001 - no file (tests build GGUFInfo by hand): bound it
        if w is not None:
            layers = [b // 2 for b in w.layers_cuda]
            out = w.output_cuda or w.token_embd_cuda
    return tuple(layers), out


def cuda_model(info: Any, geo: ModelGeometry) -> cc.CudaModel:
    key = (info.path, info.file_bytes, info.tensor_bytes, geo.n_layer)
    m = _MODELS.get(key)
    if m is None:
        if len(_MODELS) > 32:
            _MODELS.clear()
        layers, out = _largest_matrices(info, geo)
        kvl = geo.kv_layers
        m = _MODELS[key] = cc.CudaModel(
            k_width=max((geo.k_width[il] for il in kvl), default=0),
            v_width=max((geo.v_width[il] for il in kvl), default=0),
            head_dim=max((geo.head_k[il] for il in kvl), default=0),
            max_layer_matrix=layers,
            output_matrix=out,
        )
    return m


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
) -> list[tuple[str, int, str]]:
    """[(device, bytes, detail)] for a load with CUDA GPUs (ldev: device per layer, the last
    entry the output layer). cpu_est is the CPU-calibrated estimate, whose FFN, recurrent and
    no-flash-attention phases (less the host-side input row) stand in where this module has
    no CUDA-specific term."""
    shape = geo.compute
    cm = cuda_model(info, geo)
    qk, qv = BLOCKS[types[0]][0] > 1, BLOCKS[types[1]][0] > 1
    tb = tuple(BLOCKS[x][1] / BLOCKS[x][0] for x in types)
    t = cc._tokens(r)
    row = 4 * t * shape.n_embd
    gpus = sorted({d for d in ldev if d != "CPU"}) or ["CUDA0"]
    cpu_layers = [il for il, d in enumerate(ldev[:-1]) if d == "CPU"]
    out_cpu = ldev[-1] == "CPU"
    calib = {
        k: max(v - row, row)
        for k, v in phases(shape, r, fa_on, n_swa_cells, False).items()
        if k not in ("output",) and not (fa_on and k == "attention")
    }
    res: list[tuple[str, int, str]] = []
    for i, dev in enumerate(gpus):
        ph = cc.gpu_full(shape, cm, r, fa_on, n_swa_cells, qk, qv)
        if dev != (ldev[-1] if not out_cpu else gpus[0]):
            ph.pop("output", None)
        ph.update({f"{k} (CPU calibration)": v for k, v in calib.items()})
        extra = 0
        if i == 0:  # op_offload runs on the first (highest-priority) GPU backend
            ph.update(
                cc.partial_offload_phases(
                    shape, cm, r, fa_on, n_swa_cells, qk, qv, (tb[0], tb[1]), cpu_layers, out_cpu
                )
            )
            extra = cc.allowance(shape, cm, r, cpu_layers, out_cpu)
        extra += cc.moe_extra(shape, r)
        peak = max(ph.values()) + extra
        detail = "CUDA: " + cc.describe(ph) + f" for a {t}-token ubatch"
        if extra:
            detail += f" + {extra / MiB:.0f} MiB allowance (CPU layers / routed experts)"
        res.append((dev, peak, detail))
    if cpu_layers or out_cpu:
        notes.append(
            "compute: with layers on the CPU, op_offload copies their weights and K/V "
            "into the GPU compute buffer; where ggml-alloc places them varies, so the "
            f"GPU compute buffer includes a safety allowance of {cc.PARTIAL_ALLOWANCE_ROWS} "
            "hidden rows per token (the exact plan is authoritative)"
        )
    host = cc.host_bytes(shape, cm, r, fa_on, n_swa_cells, qk or qv)
    res.append(("CPU", host, "CUDA_Host: graph inputs (token embeddings, KQ masks, indices)"))
    del cpu_est
    return res
