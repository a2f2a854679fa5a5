"""Which GPU llama.cpp calls "CUDA<N>", and which part of a GPU's memory is this app's.

Pure rules over what NVML reports (no NVML calls here), so they are tested with recorded
readings; ``engine.runtime.telemetry`` asks NVML and applies them.

Device numbering: llama.cpp names GPUs "CUDA0", "CUDA1", ... in CUDA's order, which follows
``CUDA_DEVICE_ORDER`` (default FASTEST_FIRST) and then ``CUDA_VISIBLE_DEVICES``; NVML numbers
them by PCI bus id. We assume CUDA's order is PCI bus order before ``CUDA_VISIBLE_DEVICES``
applies: exact with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and when all GPUs are the same model
(FASTEST_FIRST breaks ties by bus id); with mixed GPUs it may be wrong, and ``notes`` says so.
The runtime child inherits our environment, so these are the variables llama.cpp sees.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Method = Literal["per-process", "difference", "unattributed"]


@dataclass(frozen=True)
class GpuIdentity:
    """What identifies an NVML device across the two numbering schemes."""

    nvml_index: int
    uuid: str
    pci_bus_id: str
    name: str = ""


@dataclass(frozen=True)
class Attribution:
    """How a GPU's used memory splits, and how that was found (``engine.runtime.telemetry.GpuSnapshot`` carries it)."""

    this_app_bytes: int
    other_processes_bytes: int
    method: Method
    note: str | None


def _bus_key(bus_id: str) -> tuple[int, ...]:  # "00000000:3B:00.0" or legacy "0000:3b:00.0"
    try:
        return tuple(int(p, 16) for p in bus_id.replace(".", ":").split(":"))
    except ValueError:
        return (1 << 62,)  # unparsable ids sort last, in NVML order (sorted() is stable)


def cuda_order(gpus: Sequence[GpuIdentity], env: Mapping[str, str]) -> tuple[list[GpuIdentity], list[str]]:
    """The GPUs llama.cpp will see, in its order, and notes on how sure that is.

    ``CUDA_VISIBLE_DEVICES`` holds indices into the PCI-ordered list or UUIDs ("GPU-…", a unique
    prefix will do); as in CUDA, the list ends at the first invalid, repeated or ambiguous entry,
    and at a MIG instance ("MIG-…"), which cannot be matched to its GPU from here.
    """
    ordered = sorted(gpus, key=lambda g: _bus_key(g.pci_bus_id))
    notes: list[str] = []
    if env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({g.name for g in ordered}) > 1:
        notes.append(
            "The GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so the CUDA "
            "numbers shown may not match llama.cpp's; set CUDA_DEVICE_ORDER=PCI_BUS_ID "
            "to make them exact."
        )
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return ordered, notes
    chosen: list[GpuIdentity] = []
    for raw in visible.split(","):
        entry = raw.strip()
        match: GpuIdentity | None = None
        if entry.isdigit():
            match = ordered[int(entry)] if int(entry) < len(ordered) else None
        elif entry and not entry.upper().startswith("MIG-"):
            want = entry.lower().removeprefix("gpu-")
            found = [g for g in ordered if g.uuid.lower().removeprefix("gpu-").startswith(want)]
            match = found[0] if len(found) == 1 else None
        if match is None or match in chosen:
            if entry:
                notes.append(
                    f"CUDA_VISIBLE_DEVICES entry {entry!r} is not shown: it names no "
                    f"single GPU (or a MIG instance); CUDA stops reading the list there."
                )
            break
        chosen.append(match)
    return chosen, notes


def attribute_gpu_memory(
    used_bytes: int,
    processes: Iterable[tuple[int, int | None]],
    our_pids: Collection[int],
    baseline_used_bytes: int | None,
    runtime_running: bool = True,
) -> Attribution:
    """Split a GPU's used memory into this app and everything else.

    ``processes``: (pid, usedGpuMemory) from NVML's compute and graphics lists. A process with
    both contexts is in both lists with the same memory, so each pid counts once. ``None``: NVML
    cannot say (Windows WDDM, some vGPUs). If the list is empty (many containers hide it) or
    lacks our figures, fall back to growth since ``baseline_used_bytes`` (taken with no runtime).
    With no runtime running, an empty list means plainly that none of it is ours.
    """
    per_pid: dict[int, int | None] = {}
    for pid, mem in processes:
        old = per_pid.get(pid)
        per_pid[pid] = mem if old is None else (old if mem is None else max(old, mem))
    ours = {pid: mem for pid, mem in per_pid.items() if pid in our_pids}
    known = sum(mem for mem in ours.values() if mem is not None)
    if (per_pid or not runtime_running) and None not in ours.values():
        this, method, note = known, "per-process", None
    elif baseline_used_bytes is not None:
        this, method = max(0, used_bytes - baseline_used_bytes), "difference"
        note = (
            "The driver lists no per-process memory here, so this app's share is the growth "
            "in use since before the runtime started; other programs' changes since then "
            "count as ours."
        )
    else:
        this, method = known, "unattributed"
        note = (
            "The driver lists no per-process memory here and nothing was measured before the "
            "runtime started, so this app's use cannot be told apart from other processes'."
        )
    this = min(this, max(used_bytes, 0))
    return Attribution(this, max(0, used_bytes - this), method, note)  # type: ignore[arg-type]
