"""What the CUDA driver takes on a GPU beyond the buffers llama.cpp logs (component "driver").

llama.cpp logs every buffer it allocates ("CUDA0 model/KV/compute buffer size"), and its
llama-fit-params sums those; but the GPU loses more than that sum. On an NVIDIA H200 (CUDA
build of 0c1e570, load mode NONE, cudaMemGetInfo after every log line:
benchmarks/results/fit-loads-trace-2026-12-05.json) the difference was 4.66-27.52 MiB per load,
enough that settings fitted to the last MiB failed to create their context (qwen3-32b needed
306.75 MiB of compute with 309 MiB free). It is three things, each reproduced to 0.01 MiB in
all six traced loads, and a fourth that no load takes but none can use:

1. **Allocation granularity.** Every CUDA buffer is one ``cudaMalloc``
   (ggml/src/ggml-cuda/ggml-cuda.cu, ``ggml_cuda_device_malloc``), which the driver rounds up to
   2 MiB: a 4026.83 MiB model buffer takes 4028. llama.cpp allocates one model buffer per buffer
   type and device (src/llama-model.cpp ``load_tensors``, one per ``ctx_map`` entry), one KV buffer
   per cache and device (base, SWA, recurrent, MTP… each its own ``ctx_map``), and one compute
   buffer per backend (ggml-alloc's single chunk: CUDA buffers have no maximum size). The plans
   keep exactly one allocation per such buffer on a CUDA device, so each allocation is rounded.
2. **GPU page tables for pinned host memory.** ``cudaMallocHost`` memory (ggml-cuda's
   ``CUDA_Host`` buffer type) is mapped into the GPU's address space, and the GPU pays for the
   mapping: 8 bytes per 4 KiB page (pinned / 512), taken in 2 MiB steps, i.e. 2 MiB per GiB of
   pinned memory rounded to the nearest GiB (the rounding that fits every trace: 0.63 → 0,
   6.13 → 6, 18.52 → 18, 23.82 → 24 MiB; rounding up would be 2 MiB over in four of six). Pinned
   are: the host's weights in load mode NONE (``make_cpu_buft_list`` puts the GPU's host buffer
   type before the CPU's, overrides to CPU included; with mmap llama-model-loader.cpp swaps it for
   the plain CPU type, "avoid using a host buffer when using mmap", so mapped weights pin
   nothing), the host's compute buffer when the first model device is a local GPU
   (llama-context.cpp: "use the host buffer of the first device"; RPC devices come first) and
   the output buffer when the output layer is on a GPU (``output_reserve``: the output device's
   host buffer type). CPU_REPACK weights and host KV caches are plain CPU buffers. Pinned memory
   is mapped into every GPU, so each GPU pays for all of it.
3. **2 MiB per context on each GPU**, taken at the first graph reserve (every trace).
4. **The last 2 MiB page of each GPU** (:data:`HEADROOM`), which no cudaMalloc hands out
   (benchmarks/fit_driver.py's probe).

Measured on CUDA only: the term is added on devices whose name starts with "CUDA" (not the
host, RPC workers, Metal or Vulkan), on one GPU; several GPUs, split mode "tensor" (a meta
device's buffers) and a second context (drafting) follow the same rules but were not traced.
Not modelled: ``GGML_CUDA_NO_PINNED`` (nothing pinned) and what the first decode takes later
(cuBLAS workspace, ggml-cuda's memory pool). llama.cpp does not log this memory, so a measured plan has
no "driver" component (``NOT_LOGGED``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.core.memory_types import Allocation, Device, GiB, LoadMode, MiB

GRANULARITY = 2 * MiB  # cudaMalloc's rounding on the H200 (driver's, not llama.cpp's)
PAGE_TABLE_STEP = 2 * MiB  # per GiB of pinned host memory (8 bytes per 4 KiB page)
CONTEXT_BYTES = 2 * MiB  # per llama_context on each GPU
#: The last 2 MiB page of a GPU that no cudaMalloc hands out: on the H200 the largest buffer
#: that could be allocated always left 3.12 MiB of cudaMemGetInfo's free memory (at 63, 307,
#: 309 and 1023 MiB free; benchmarks/fit_driver.py's probe, fit-2026-12-05.json), i.e. one
#: whole page plus the 1.12 MiB below a page. Taken by nothing, but no plan can count on it.
HEADROOM = 2 * MiB


def is_cuda(device: str) -> bool:
    return device.startswith("CUDA")


def round_up(nbytes: int) -> int:
    """What one ``cudaMalloc`` of ``nbytes`` takes."""
    return -(-nbytes // GRANULARITY) * GRANULARITY


def page_tables(pinned: int) -> int:
    """GPU bytes that map ``pinned`` bytes of pinned host memory (2 MiB per GiB, nearest GiB)."""
    return (pinned + GiB // 2) // GiB * PAGE_TABLE_STEP


def pinned_bytes(
    allocations: Sequence[Allocation], load_mode: LoadMode, gpus: Sequence[Device], output_device: str
) -> int:
    """Bytes of ``allocations`` that llama.cpp puts in pinned (``CUDA_Host``) memory."""
    local = [g for g in gpus if is_cuda(g.name) and not g.endpoint]
    if not local:
        return 0
    first_is_local = not any(g.endpoint for g in gpus)  # llama.cpp puts RPC devices first
    total = 0
    for a in allocations:
        if a.device != "CPU" or a.evictable:
            continue
        if a.component == "weights":
            total += a.bytes if load_mode == "none" and not a.detail.startswith("CPU_REPACK") else 0
        elif a.component == "compute":
            total += a.bytes if first_is_local else 0
        elif a.component == "output":
            total += a.bytes if is_cuda(output_device) else 0
    return total


@dataclass(frozen=True)
class DriverParts:
    """One GPU's driver term, part by part."""

    granularity: int
    buffers: int
    page_tables: int
    pinned: int
    contexts: int
    headroom: int = 0

    @property
    def total(self) -> int:
        return self.granularity + self.page_tables + self.contexts * CONTEXT_BYTES + self.headroom

    def minus(self, other: DriverParts) -> DriverParts:
        return DriverParts(
            self.granularity - other.granularity,
            self.buffers - other.buffers,
            self.page_tables - other.page_tables,
            self.pinned - other.pinned,
            self.contexts - other.contexts,
            self.headroom - other.headroom,
        )

    def words(self) -> str:
        ctx = f"{self.contexts} contexts" if self.contexts != 1 else "context"
        return (
            f"CUDA driver (not in llama.cpp's log): 2 MiB allocation granularity of "
            f"{self.buffers} buffers (+{self.granularity / MiB:.2f} MiB), page tables for "
            f"{self.pinned / MiB:.2f} MiB of pinned host memory (+{self.page_tables / MiB:.0f} MiB), "
            f"{ctx} (+{self.contexts * CONTEXT_BYTES / MiB:.0f} MiB), and the last page no "
            f"cudaMalloc takes (+{self.headroom / MiB:.0f} MiB)"
        )


def driver_parts(
    buffers: Sequence[tuple[str, int]], pinned: int, contexts: int = 1
) -> dict[str, DriverParts]:
    """Per CUDA device holding any of ``buffers`` ((device, bytes), one per cudaMalloc)."""
    out: dict[str, DriverParts] = {}
    for dev in dict.fromkeys(d for d, b in buffers if is_cuda(d) and b > 0):
        mine = [b for d, b in buffers if d == dev and b > 0]
        out[dev] = DriverParts(
            sum(round_up(b) - b for b in mine), len(mine), page_tables(pinned), pinned, contexts, HEADROOM
        )
    return out


def cuda_buffers(allocations: Sequence[Allocation]) -> list[tuple[str, int]]:
    """(device, bytes) of each CUDA buffer: one per allocation on a CUDA device, except the
    recurrent rows (r and s states, and whatever else the plan lists there), which llama.cpp
    keeps in one buffer per device (src/llama-memory-recurrent.cpp: one context per buffer type)."""
    out: list[tuple[str, int]] = []
    recurrent: dict[str, int] = {}
    for a in allocations:
        if not is_cuda(a.device) or a.component == "driver":
            continue
        if a.component == "recurrent":
            recurrent[a.device] = recurrent.get(a.device, 0) + a.bytes
        else:
            out.append((a.device, a.bytes))
    return out + list(recurrent.items())


def driver_allocations(
    allocations: Sequence[Allocation], load_mode: LoadMode, gpus: Sequence[Device], output_device: str
) -> list[Allocation]:
    """The driver term of one model and one context, per CUDA device with anything on it."""
    pinned = pinned_bytes(allocations, load_mode, gpus, output_device)
    return [
        Allocation("driver", dev, p.total, p.words())
        for dev, p in driver_parts(cuda_buffers(allocations), pinned).items()
    ]


def drafting_driver(
    target: Sequence[Allocation],
    target_output: str,
    drafter: Sequence[Allocation],
    drafter_output: str,
    load_mode: LoadMode,
    gpus: Sequence[Device],
    same_model: bool,
) -> list[Allocation]:
    """What a drafting context adds to the target's driver term: its own context's 2 MiB, the
    rounding of its buffers (``same_model``: MTP weights load into the target's model buffers,
    so they round together with them) and the page tables its pinned memory adds to the
    target's (the rounding is of the process's whole pinned memory, so not additive)."""
    t_buf = cuda_buffers(target)
    grow: dict[str, int] = {}  # MTP blocks: the target's model buffer on that device grows
    for a in drafter if same_model else ():
        if a.component == "weights" and is_cuda(a.device):
            grow[a.device] = grow.get(a.device, 0) + a.bytes
    both = []
    for a in target:
        if is_cuda(a.device) and a.component != "driver":
            grown = grow.pop(a.device, 0) if a.component == "weights" else 0
            both.append((a.device, a.bytes + grown))
    both += list(grow.items())  # devices that hold no target weights
    d_buf = cuda_buffers([a for a in drafter if not (same_model and a.component == "weights")])
    both += d_buf
    t_pin = pinned_bytes(target, load_mode, gpus, target_output)
    d_pin = pinned_bytes(drafter, load_mode, gpus, drafter_output)
    before = driver_parts(t_buf, t_pin)
    after = driver_parts(both, t_pin + d_pin, contexts=2)
    out = []
    for dev, p in after.items():
        delta = p.minus(before.get(dev, DriverParts(0, 0, 0, 0, 0)))
        words = (
            f"CUDA driver, drafting context: +{delta.granularity / MiB:.2f} MiB of 2 MiB granularity "
            f"({delta.buffers} buffers more), page tables for {d_pin / MiB:.2f} MiB more pinned "
            f"host memory (+{delta.page_tables / MiB:.0f} MiB), its context (+{CONTEXT_BYTES / MiB:.0f} MiB)"
        )
        out.append(Allocation("driver", dev, delta.total, words))
    return out
