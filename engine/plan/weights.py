"""Weights per device and buffer as llama.cpp (0c1e570) places them, in either load mode.

Layers go where ``layer_dev`` puts them (notes §10); the input layer stays on the host; a
CPU-only load's repackable matrices move to CPU_REPACK (engine.plan.cpu_repack) and routed
experts to the host with ``--n-cpu-moe`` (engine.plan.cpu_moe). What the host's plain buffer
costs depends on the load mode (``PlanSettings.load_mode``):

- **none**: every buffer is allocated (``ggml_backend_alloc_ctx_tensors_from_buft``) and holds
  each of its tensors, padded to 32 bytes. A tied output (no ``output.weight``) is created as
  ``token_embd`` with ``TENSOR_DUPLICATED`` (src/llama-model-loader.cpp, ``create_tensor``):
  in the buffer type that already holds ``token_embd`` it is the same tensor, elsewhere a copy.
  Archs whose loader creates the output *before* ``tok_embd`` (``TIED_OUTPUT_FIRST``, derived
  from ``load_arch_tensors`` by tools/gen_arch_table.py) find nothing to share, so their host
  buffer holds two tensors of that name: two copies even on the CPU.
- **mmap** (llama.cpp's default, and the runtime child's): the CPU device's default buffer type
  is not allocated. ``llama_model_base::load_tensors`` (src/llama-model.cpp, "ml.use_mmap ...
  && buffer_from_host_ptr_supported && is_default_buft") wraps the file's bytes from the first
  to the last byte of that buffer's tensors (``llama_model_loader::get_mapping_range``), one
  ``CPU_Mapped`` buffer per file. So two tensors of one name are one range (no second copy),
  and the range also spans whatever lies between its tensors in the file (repacked matrices,
  other devices' layers, MTP blocks left unloaded): those pages are read once, or never, but
  the buffer is that size. With mmap the GPUs' host type (CUDA_Host) gives way to the plain
  CPU type ("avoid using a host buffer when using mmap", src/llama-model-loader.cpp), so host
  weights beside a GPU are mapped too; CPU_REPACK, GPU and RPC buffers are always allocated.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

from engine.core.memory_types import Allocation, Device, MiB, PlanSettings
from engine.gguf.arch_table import LAZY_TENSORS, TIED_OUTPUT_FIRST
from engine.gguf.hparams import layer_of, mtp_only
from engine.gguf.inspect import GGUFInfo
from engine.gguf.reader import Corrupt, read_header
from engine.gguf.split_parts import part_paths, read_model_tensor_dims, split_count
from engine.plan.cpu_features import CpuFeatures
from engine.plan.cpu_moe import EXPS_REGEX, move_experts
from engine.plan.cpu_repack import RepackPlan, host_repack, tensor_layout
from engine.plan.kv_sizes import ModelGeometry

LAZY_MIN_BYTES = 4 << 30  # lazy_read::add's auto_min_size: larger tensors are read lazily


def place_weights(
    info: GGUFInfo,
    geo: ModelGeometry,
    settings: PlanSettings,
    ldev: list[str],
    gpus: Sequence[Device],
    devices: Sequence[Device],
) -> tuple[list[Allocation], list[str], bool]:
    """(weight allocations, notes, whether --n-cpu-moe moved experts) of the target's weights
    (without an MTP block's tensors that load only with load_mtp: engine.plan.drafting plans
    those)."""
    repack, repack_note = host_repack(info, ldev, gpus)
    host_like = {"CPU"} | {g.name for g in gpus if g.host_layout}  # a worker's CPU: host layout
    mmap = settings.load_mode == "mmap"
    weights = layer_weights(geo, ldev, host_like, repack, mmap)
    weights, moe_note = move_experts(info, settings.n_cpu_moe, ldev, host_like, devices, weights)
    if mmap and info.weights is not None:
        weights = _mapped(info, settings, ldev, gpus, devices, repack, weights)
    return weights, [n for n in (repack_note, moe_note) if n], moe_note is not None


def layer_weights(
    geo: ModelGeometry, ldev: list[str], host_like: set[str], repack: RepackPlan | None, mmap: bool
) -> list[Allocation]:
    """Weight bytes per device: input layer on the host, layers and output where ldev says
    (sized as on the host on ``host_like`` devices, padded as in a CUDA buffer elsewhere); a
    repacking load's matrices as a second CPU allocation (CPU_REPACK). The host's plain figure
    is the load mode "none" one; with mmap :func:`place_weights` replaces it by the mapped span."""
    w = geo.weights
    if w is None:
        return []
    by_dev: dict[str, int] = {"CPU": w.input_host}
    count: dict[str, int] = {}
    skip = (w.mtp_cuda, w.mtp_host) if w.mtp_host else ((0,) * len(ldev), (0,) * len(ldev))
    for il, dev in enumerate(ldev[:-1]):
        b = w.layers_host[il] - skip[1][il] if dev in host_like else w.layers_cuda[il] - skip[0][il]
        by_dev[dev] = by_dev.get(dev, 0) + b
        count[dev] = count.get(dev, 0) + 1
    out_dev = ldev[-1]
    on_host = out_dev in host_like
    by_dev[out_dev] = by_dev.get(out_dev, 0) + (w.output_host if on_host else w.output_cuda)
    # A tied output is token_embd again in the output layer's buffer: a copy elsewhere, and on
    # the host too where the loader creates it first (TIED_OUTPUT_FIRST) and nothing is mapped.
    tied = w.tied_output and (out_dev != "CPU" or (geo.arch in TIED_OUTPUT_FIRST and not mmap))
    if tied:
        by_dev[out_dev] += w.token_embd_host if on_host else w.token_embd_cuda
    out = []
    for dev, b in by_dev.items():
        parts = [f"{count.get(dev, 0)} layers"]
        if dev == "CPU":
            parts.append("token embeddings (input layer, always host)")
        if dev == out_dev:
            parts.append("output layer" + (" + copy of the tied token embeddings" if tied else ""))
        pad = "32-byte aligned" if dev in host_like else "128-byte aligned, quantized rows padded"
        if dev == "CPU" and repack is not None and repack.bytes:
            b -= repack.moved
            parts.append("the rest of the matrices")
        out.append(Allocation("weights", dev, b, ", ".join(parts) + f" ({pad})"))
    if repack is not None and repack.bytes:
        out.append(Allocation("weights", "CPU", repack.bytes, repack.detail()))
    return out


def mapped_bytes(
    info: GGUFInfo,
    settings: PlanSettings,
    ldev: Sequence[str],
    gpus: Sequence[Device],
    devices: Sequence[Device],
    with_mtp: bool = False,
) -> tuple[int, int, int]:
    """(CPU_Mapped bytes, bytes of their own tensors, of which lazily read) of a load with mmap:
    per file, the span from the first to the last byte of the tensors in the host's plain
    buffer, plus each lazily read tensor's own mapped buffer (``with_mtp``: an MTP block's
    tensors that load only with load_mtp included)."""
    repack = host_repack(info, ldev, gpus)[0]
    local_gpu = any(d.kind == "gpu" and not d.endpoint for d in devices)
    moe_repack = None if local_gpu else host_repack(info, ["CPU"] * len(ldev), [])[0]
    # file_bytes: a Hub header copy (engine.hub) is as long as its header, its model is not
    model = (
        info.path,
        info.file_bytes,
        os.path.getmtime(info.path),
        info.architecture,
        info.n_layer,
        info.n_layer_nextn,
    )
    return _spans(
        model,
        tuple(ldev),
        repack.features if repack else None,
        max(0, settings.n_cpu_moe),
        moe_repack.features if moe_repack else None,
        with_mtp,
    )


@functools.lru_cache(maxsize=32)
def _spans(
    model: tuple[str, int, float, str, int, int],
    ldev: tuple[str, ...],
    features: CpuFeatures | None,
    n_cpu_moe: int,
    moe_features: CpuFeatures | None,
    with_mtp: bool,
) -> tuple[int, int, int]:
    """Read each file's tensor offsets once per placement (the GUI replans on every slider move)."""
    path0, file_bytes, _mtime, arch, nl, nn = model
    n_layer = len(ldev) - 1
    dims = read_model_tensor_dims(path0) if features or moe_features else {}

    def mapped(name: str) -> bool:
        if not with_mtp and mtp_only(arch, name, nl, nn):
            return False
        il = layer_of(name, n_layer)
        dev = "CPU" if il < 0 else ldev[il]
        if dev != "CPU":  # on a device, unless --n-cpu-moe keeps this expert on the host
            if not (name.startswith("blk.") and il < n_cpu_moe and re.search(EXPS_REGEX, name)):
                return False
            return not (moe_features and tensor_layout(name, *dims[name], moe_features))
        return not (features and name in dims and tensor_layout(name, *dims[name], features))

    # TENSOR_READ_LAZY tensors over lazy_read's 4 GiB get a context of their own
    # (src/llama-model-loader.cpp: lazy_read::add, ctx_key.lazy), mapped in any load mode.
    lazy_re = re.compile(
        "|".join(re.escape(f).replace("%d", r"\d+") + r"\.weight" for f in LAZY_TENSORS.get(arch, ()))
    )
    span = own = lazy = 0
    meta, types, rows0 = read_header(path0, max(file_bytes, os.path.getsize(path0)))
    n_split = split_count(meta, types)
    for path in [path0] + (part_paths(path0, n_split)[1:] if n_split > 1 else []):
        tensors = rows0 if path == path0 else read_header(path, os.path.getsize(path))[2]
        own_ctx = [
            r for r in tensors if lazy_re.pattern and r[3] > LAZY_MIN_BYTES and lazy_re.fullmatch(r[0])
        ]
        lazy += sum(r[3] for r in own_ctx)
        rows = [r for r in tensors if mapped(r[0]) and r not in own_ctx]
        if rows:
            span += max(r[4] + r[3] for r in rows) - min(r[4] for r in rows)
            own += sum(r[3] for r in rows)
    return span + lazy, own + lazy, lazy


def _mapped(
    info: GGUFInfo,
    settings: PlanSettings,
    ldev: list[str],
    gpus: Sequence[Device],
    devices: Sequence[Device],
    repack: RepackPlan | None,
    weights: list[Allocation],
) -> list[Allocation]:
    """``weights`` with the host's plain allocations replaced by the one mapped span."""
    try:
        span, own, lazy = mapped_bytes(info, settings, ldev, gpus, devices)
    except (OSError, ValueError, Corrupt):  # the file is gone or changed: the "none" figure
        return weights
    plain = [a for a in weights if a.device == "CPU" and not a.detail.startswith("CPU_REPACK")]
    rest = [a for a in weights if not any(a is p for p in plain)]
    if not plain and not span:
        return weights
    between = span - own
    lazy_words = f"; {lazy / MiB:.2f} MiB of it lazily read tensors, each mapped on its own" if lazy else ""
    mapped = [
        Allocation(
            "weights",
            "CPU",
            own,
            "CPU_Mapped: the host's own tensors in the mapped model file (mmap" + lazy_words + ")",
        )
    ]
    if between:
        # The span's other pages are other buffers' tensors (or MTP blocks left unloaded): in
        # llama.cpp's CPU_Mapped figure, but read once at load and clean page cache after, so
        # budgets leave them out; llama-fit-params sizes the host from a no-mmap run alike.
        mapped.append(
            Allocation(
                "weights",
                "CPU",
                between,
                "CPU_Mapped: the rest of the span from the host's first to its last tensor, "
                "other buffers' tensors lying in between (read once, evictable; not in fit's budget)",
                evictable=True,
            )
        )
    return mapped + rest
