"""The devices a plan may use on this machine: telemetry's devices filtered by what the
installed runtime build can offload to (`engine.core.build`).
"""

from __future__ import annotations

import dataclasses

from engine.core.build import cuda_reserve_bytes, gpu_backend
from engine.core.memory_types import Device


def plan_devices(
    telemetry_devices: list[Device] | None = None,
    runtime_on_gpu: bool = False,
    rpc: tuple[str, ...] = (),
) -> tuple[list[Device], str]:
    """Devices a plan may use, and why GPUs are absent when they are.

    ``rpc``: llama.cpp RPC workers (engine.runtime.workers), each probed now; their devices come
    after the host and before local GPUs, the order llama.cpp gives them (src/llama.cpp puts RPC
    servers "at the front of the list"). An unusable worker is refused in one sentence.

    GPUs count only if the runtime can offload to them: an NVIDIA card next to a CPU-only
    build holds nothing, and the plan must say so instead of promising VRAM it cannot use.
    Unless the runtime child already holds its CUDA context (``runtime_on_gpu``: then the free
    figure already excludes it), each GPU carries the context as ``reserved_bytes``.
    """
    if telemetry_devices is None:
        from engine.runtime.telemetry import Telemetry

        tel = Telemetry()
        try:
            telemetry_devices = tel.devices()
        finally:
            tel.close()
    cpu = [d for d in telemetry_devices if d.kind == "cpu"]
    cpu += _remote(rpc) if rpc else []  # the host, then the workers' devices
    gpus = [d for d in telemetry_devices if d.kind == "gpu"]
    backend = gpu_backend()
    if not gpus:
        return cpu, "no GPU found" if backend != "cpu" else "the runtime is a CPU-only build"
    if backend != "cuda":
        return cpu, (
            f"{len(gpus)} GPU(s) found, but the installed llama.cpp runtime is a CPU-only "
            "build; see the README's GPU section"
        )
    reserve = 0 if runtime_on_gpu else cuda_reserve_bytes()
    return cpu + [dataclasses.replace(g, reserved_bytes=reserve) for g in gpus], ""


def _remote(rpc: tuple[str, ...]) -> list[Device]:
    from engine.core.build import rpc_in_build
    from engine.core.errors import KvDeckError
    from engine.runtime.workers import remote_devices

    if not rpc_in_build():
        raise KvDeckError(
            "--rpc needs a runtime built with llama.cpp's RPC backend (-DGGML_RPC=ON); "
            "reinstall it as the README says"
        )
    return remote_devices(rpc)
