"""The vocabulary of memory planning, shared by the analytic plan, the exact dry run, the
measurement after loading, fit, the CLI and the dashboard.

Everything is a frozen dataclass of plain values so it crosses the process boundary as JSON and
can be compared field by field (predicted against measured).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Component = Literal["weights", "kv", "recurrent", "compute", "output", "driver"]
COMPONENTS: tuple[Component, ...] = ("weights", "kv", "recurrent", "compute", "output", "driver")
#: Components llama.cpp never logs, so a plan read from its log ("measured") has none of them:
#: "driver" is what the CUDA driver takes beyond the logged buffers (engine.plan.cuda_driver).
#: Where predicted meets measured, these read "not logged", never 0.
NOT_LOGGED: frozenset[Component] = frozenset({"driver"})
SplitMode = Literal["none", "layer", "row", "tensor"]
FlashAttn = Literal["auto", "on", "off"]
#: How llama.cpp reads the weights: "mmap" maps the file (llama.cpp's default, LOAD_MODE_AUTO,
#: which maps wherever the devices support it: CPUs and discrete GPUs), "none" copies them in.
LoadMode = Literal["mmap", "none"]
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class PlanSettings:
    """What the user chose; mirrors llama.cpp's model and context parameters."""

    n_ctx: int = 4096  # 0: the model's training context
    n_seq_max: int = 1
    kv_unified: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: FlashAttn = "auto"
    swa_full: bool = False
    n_batch: int = 2048
    n_ubatch: int = 512
    n_gpu_layers: int = -1  # -1: all
    split_mode: SplitMode = "layer"
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    offload_kqv: bool = True
    n_rs_seq: int = 0
    #: Load the model's MTP (nextn) layers and give it a drafting context (engine.child.selfdraft).
    mtp: bool = False
    #: Keep the routed experts of layers 0..n_cpu_moe-1 in host memory (llama.cpp's --n-cpu-moe:
    #: tensor buffer overrides to the CPU buffer type; engine.plan.cpu_moe).
    n_cpu_moe: int = 0
    #: The host's weights are the mapped file's byte range with "mmap" (tensors that share a
    #: name share bytes), buffers of their own with "none" (engine.plan.weights). The no-alloc
    #: dry run always loads with "none"; the runtime child loads with this.
    load_mode: LoadMode = "mmap"

    def replace(self, **changes: Any) -> PlanSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tensor_split"] = list(self.tensor_split)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "tensor_split" in kwargs:
            kwargs["tensor_split"] = tuple(float(x) for x in kwargs["tensor_split"])
        return cls(**kwargs)


@dataclass(frozen=True)
class Device:
    """A memory pool: "CPU" (host RAM), a GPU such as "CUDA0", or a worker's device such as
    "RPC0[10.0.0.5:50052]" (llama.cpp's name for its buffers; kind "gpu", as ggml-rpc says)."""

    name: str
    kind: Literal["cpu", "gpu"]
    total_bytes: int
    free_bytes: int
    description: str = ""
    #: Memory the runtime child will take on this device outside llama.cpp's buffers (the CUDA
    #: context and its kernels) that ``free_bytes`` does not already exclude; fit keeps it free.
    reserved_bytes: int = 0
    #: The llama.cpp RPC worker ("HOST:PORT") that holds this device; "" for a local one.
    endpoint: str = ""
    #: A remote device whose buffers lay tensors out like host RAM (a worker's CPU): weights are
    #: sized as on the host, without the padded quantized rows of a CUDA buffer.
    host_layout: bool = False


def rpc_device_name(endpoint: str, index: int) -> str:
    """The name llama.cpp gives a worker's device's buffers (``RPC<i>[<endpoint>]``, from
    ``ggml_backend_rpc_buffer_type``; ``i`` counts that worker's devices), so a plan, the load log
    and fit all use one name."""
    return f"RPC{index}[{endpoint}]"


@dataclass(frozen=True)
class Allocation:
    """Bytes of one component on one device; ``detail`` says how it was derived, in words.

    ``evictable``: bytes llama.cpp counts in a buffer but which need not stay in memory, such as
    the file pages a ``CPU_Mapped`` span covers for other buffers' tensors (read once while
    loading, then clean page cache the OS may drop). The plan shows them, since llama.cpp's log
    does; budgets leave them out (:meth:`MemoryPlan.resident_bytes_for`)."""

    component: Component
    device: str
    bytes: int
    detail: str = ""
    evictable: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    """Memory per device and component, from one source (analytic, dry run, or measured)."""

    source: Literal["analytic", "exact", "measured"]
    settings: PlanSettings
    n_ctx: int  # resolved as llama.cpp resolves it (padding, per-sequence rounding)
    n_ctx_seq: int
    kv_cells: int  # cells per stream of the full-attention cache
    kv_cells_swa: int  # cells per stream of the sliding-window cache (0 if none)
    allocations: tuple[Allocation, ...]
    notes: tuple[str, ...] = ()
    flash_attn_resolved: bool | None = None  # None: not known without a dry run

    def bytes_for(self, device: str | None = None, component: Component | None = None) -> int:
        return sum(
            a.bytes
            for a in self.allocations
            if (device is None or a.device == device) and (component is None or a.component == component)
        )

    def resident_bytes_for(self, device: str | None = None) -> int:
        """What must stay in memory on ``device``: :meth:`bytes_for` without evictable bytes.
        Fit and preflight budget with this, the dashboard shows :meth:`bytes_for`."""
        return sum(
            a.bytes for a in self.allocations if (device is None or a.device == device) and not a.evictable
        )

    def devices(self) -> list[str]:
        seen: list[str] = []
        for a in self.allocations:
            if a.device not in seen:
                seen.append(a.device)
        return seen

    def to_json(self) -> dict[str, Any]:
        per_device = {
            dev: {c: self.bytes_for(dev, c) for c in COMPONENTS} | {"total": self.bytes_for(dev)}
            for dev in self.devices()
        }
        return {
            "source": self.source,
            "settings": self.settings.to_dict(),
            "n_ctx": self.n_ctx,
            "n_ctx_seq": self.n_ctx_seq,
            "kv_cells": self.kv_cells,
            "kv_cells_swa": self.kv_cells_swa,
            "flash_attn": self.flash_attn_resolved,
            "devices": per_device,
            "total_bytes": self.bytes_for(),
            "allocations": [dataclasses.asdict(a) for a in self.allocations],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Problem:
    """An invalid or risky setting, explained in words before anything is loaded."""

    field: str  # the setting to change, e.g. "type_v"
    message: str
    severity: Literal["error", "warning"] = "error"


@dataclass(frozen=True)
class FitResult:
    """What fit chose and why it stopped there."""

    settings: PlanSettings
    plan: MemoryPlan
    budgets: dict[str, int]  # device -> usable bytes (after the margin)
    limited_by: str  # e.g. "CUDA0 kv" or "training context"
    reason: str  # one sentence
    fits: bool
    extra: dict[str, Any] = field(default_factory=dict)
