"""The multi-GPU split editor's words: which split modes this machine can use, and the name
each device's ratio box carries (a local GPU by number, a llama.cpp RPC worker by endpoint)."""

from __future__ import annotations

from engine.core.memory_types import Device


def split_unavailable(mode: str, n_gpus: int, backend: str) -> str | None:
    """Why a split mode cannot be used on this machine with this runtime, or None."""
    if mode == "none":
        return None
    if n_gpus == 0:
        return "needs a GPU (none usable)"
    if mode == "row":
        if backend == "cuda":
            return "row split is not supported by the CUDA backend of this llama.cpp"
        return None if n_gpus >= 2 else "needs at least two GPUs"
    if mode == "tensor" and n_gpus < 2:
        return "needs at least two GPUs"
    return None


def split_label(dev: Device, index: int) -> str:
    """A device's name in the split editor: GPUn for a local one, a worker's by its endpoint
    (with its device number when the worker lends more than one)."""
    if not dev.endpoint:
        return f"GPU{index}"
    n = dev.name.split("[", 1)[0].removeprefix("RPC")
    return dev.endpoint if n in ("", "0") else f"{dev.endpoint} #{n}"
