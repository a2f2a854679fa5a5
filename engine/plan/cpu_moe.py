"""Routed experts kept in host memory: llama.cpp's ``--n-cpu-moe N`` (and ``-ot exps=CPU``).

``common/common.h`` turns ``--n-cpu-moe N`` into one tensor buffer override per layer
``il < N``: the pattern ``blk\\.<il>\\.ffn_(up|down|gate|gate_up)_(ch|)exps`` (``regex_search``,
so biases of those tensors match too) with ``ggml_backend_cpu_buffer_type()``. The loader
(``src/llama-model-loader.cpp``, "check overrides") then does not give the tensor the CPU
buffer directly but ``select_weight_buft`` over the CPU buffer-type list
(``src/llama-model.cpp: make_cpu_buft_list``): [the first GPU's host type, extra CPU types
(CPU_REPACK), CPU]. With a local GPU its host type wins, and with mmap (llama.cpp's default, and
the runtime child's) "avoid using a host buffer when using mmap" turns it into the plain CPU
buffer; so the experts leave the layer's device for CPU, sized as on the host. RPC devices
have no host buffer type (``ggml-rpc.cpp``: ``get_host_buffer_type = NULL``), so with only
remote devices the experts land in CPU_REPACK where repack accepts them (3-D ``MUL_MAT_ID``
weights, ``engine.plan.cpu_repack``), else in CPU. A layer already on the CPU is unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import replace

from engine.core.memory_types import Allocation, Device, MiB
from engine.gguf.hparams import cuda_bytes, mtp_only
from engine.gguf.inspect import GGUFInfo
from engine.gguf.split_parts import read_model_tensor_dims
from engine.plan.cpu_repack import cpu_only_repack, tensor_bytes, tensor_layout

#: LLM_FFN_EXPS_REGEX of common/common.h.
EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
_LAYER = re.compile(r"blk\.(\d+)\.")


def override_patterns(n_cpu_moe: int) -> list[str]:
    """The override patterns llama.cpp's ``--n-cpu-moe N`` adds (``llm_ffn_block_regex``)."""
    return [f"blk\\.{il}{EXPS_REGEX}" for il in range(max(0, n_cpu_moe))]


@functools.lru_cache(maxsize=16)
def _experts(
    path: str, _file_bytes: int, mtp: tuple[str, int, int]
) -> tuple[tuple[int, str, str, tuple[int, ...]], ...]:
    """(layer, name, type, ne) of every tensor the override patterns match, read once per file
    (the GUI replans on every slider move; the header of a large MoE holds thousands of tensors).
    An MTP block's experts that load only with load_mtp are left to engine.plan.drafting, as
    the layer sums leave them (``mtp``: arch, n_layer, n_layer_nextn)."""
    out = []
    for name, (qtype, ne) in read_model_tensor_dims(path).items():
        m = _LAYER.match(name)
        if m and re.search(EXPS_REGEX, name) and not mtp_only(mtp[0], name, mtp[1], mtp[2]):
            out.append((int(m.group(1)), name, qtype, ne))
    return tuple(out)


def layer_span(layers: Sequence[int]) -> str:
    """Say "layers 0–11" or "layer 3", for notes and the fit's sentences."""
    if not layers:
        return "no layers"
    lo, hi = min(layers), max(layers)
    return f"layer {lo}" if lo == hi else f"layers {lo}–{hi}"


def move_experts(
    info: GGUFInfo,
    n_cpu_moe: int,
    ldev: Sequence[str],
    host_like: set[str],
    devices: Sequence[Device],
    weights: list[Allocation],
) -> tuple[list[Allocation], str | None]:
    """``weights`` with the routed experts of layers ``< n_cpu_moe`` moved from their layer's
    device to the host, and a note saying what moved; unchanged when nothing moves."""
    n_layer = len(ldev) - 1
    if n_cpu_moe <= 0 or not weights:
        return weights, None
    local_host = any(d.kind == "gpu" and not d.endpoint for d in devices)
    repack = None if local_host else cpu_only_repack(info)[0]
    off: dict[str, int] = {}
    plain = packed = count = 0
    layers: set[int] = set()
    mtp = (info.architecture, info.n_layer, info.n_layer_nextn)
    for il, name, qtype, ne in _experts(info.path, info.file_bytes, mtp):
        if il >= min(n_cpu_moe, n_layer) or ldev[il] == "CPU":
            continue
        nbytes = tensor_bytes(qtype, ne)
        host = -(-nbytes // 32) * 32
        dev = ldev[il]
        off[dev] = off.get(dev, 0) + (host if dev in host_like else cuda_bytes(qtype, ne[0], nbytes))
        if repack is not None and tensor_layout(name, qtype, ne, repack.features):
            packed += host
        else:
            plain += host
        count += 1
        layers.add(il)
    if not count:
        return weights, None
    out = [replace(a, bytes=a.bytes - off.get(a.device, 0)) for a in weights]
    where = layer_span(sorted(layers))
    if plain:
        out.append(
            Allocation("weights", "CPU", plain, f"routed experts of {where} (tensor overrides to CPU)")
        )
    if packed:
        out.append(
            Allocation(
                "weights", "CPU", packed, f"CPU_REPACK: routed experts of {where} (tensor overrides to CPU)"
            )
        )
    note = (
        f"experts of {where} on the CPU ({count} tensors, {(plain + packed) / MiB:.2f} MiB"
        + (", repacked" if packed else "")
        + "; --n-cpu-moe)"
    )
    return out, note


#: Why a CUDA plan with experts on the CPU sizes its compute buffer as it does.
CUDA_COMPUTE_NOTE = (
    "compute: with routed experts on the CPU, op_offload copies them into the GPU compute buffer "
    "for large batches; not measured on a GPU yet, so those layers are sized as if wholly on the "
    "CPU (the partial-offload allowance and replay over all their weights, a bound above the "
    "experts alone; the exact plan is authoritative)"
)


def compute_layers(ldev: Sequence[str], n_cpu_moe: int) -> list[str]:
    """The layer devices a CUDA compute estimate uses: layers whose experts are on the CPU
    count as CPU layers (the stated bound of ``CUDA_COMPUTE_NOTE``); the output layer stays."""
    n = min(max(0, n_cpu_moe), len(ldev) - 1)
    return ["CPU"] * n + list(ldev[n:])
