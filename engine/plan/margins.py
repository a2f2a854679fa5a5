"""Safety margins per device kind and per device, for fit and preflight.

One margin for every device was wrong: a margin meant for a GPU (llama.cpp's `-fitt` default
is 1024 MiB per GPU, and users raise it for a desktop sharing the card) also came off host RAM,
so a large GPU margin on a machine with little free RAM left the CPU nothing and fit answered
256 tokens. GPUs and host RAM now have their own margins, and single devices may override them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.core.errors import KvDeckError
from engine.core.memory_types import Device, MiB

DEFAULT_GPU_MARGIN = 1024 * MiB  # llama.cpp's -fitt default
# Host RAM: llama.cpp assumes it unlimited, but the OS, the GUI and page cache need room; 1 GiB
# keeps a desktop responsive without hiding much memory on a small machine.
DEFAULT_CPU_MARGIN = 1024 * MiB


@dataclass(frozen=True)
class Margins:
    """Bytes kept free on each device: `gpu` for every GPU, `cpu` for host RAM, `per_device`
    (device name -> bytes, e.g. {"CUDA1": 512 MiB}) overriding either for one device."""

    gpu: int = DEFAULT_GPU_MARGIN
    cpu: int = DEFAULT_CPU_MARGIN
    per_device: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def uniform(cls, margin: int) -> Margins:
        """The same margin on every device, host included (tests and exact comparisons)."""
        return cls(gpu=margin, cpu=margin)

    def for_device(self, device: Device) -> int:
        if device.name in self.per_device:
            return self.per_device[device.name]
        return self.gpu if device.kind == "gpu" else self.cpu

    @classmethod
    def from_options(cls, gpu_spec: str | None, cpu_mib: int | None) -> Margins:
        """Parse the CLI's `--margin-mib` and `--cpu-margin-mib`.

        `gpu_spec` is MiB for every GPU ("2048"), per device ("CUDA0=2048,CUDA1=1024"), or both
        ("1536,CUDA1=512": 1536 for every GPU but CUDA1). A named device may also be the host
        ("CPU=4096"), though `--cpu-margin-mib` says that more plainly."""
        every, per = per_device_mib(gpu_spec, "--margin-mib")
        gpu = DEFAULT_GPU_MARGIN if every is None else every
        cpu = DEFAULT_CPU_MARGIN if cpu_mib is None else _mib(str(cpu_mib), "--cpu-margin-mib")
        return cls(gpu=gpu, cpu=cpu, per_device=per)


def per_device_mib(spec: str | None, option: str) -> tuple[int | None, dict[str, int]]:
    """Parse "MIB", "NAME=MIB" entries or both, comma-separated, as bytes: (the plain value or
    None, {name: bytes}). A name may be a device ("CUDA1", "CPU") or, for fit's `--budget-mib`,
    a worker's endpoint ("10.0.0.5:50052": every device of that worker)."""
    every, per = None, {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _eq, value = part.rpartition("=")
        amount = _mib(value, f"{option} {part!r}")
        if name.strip():
            per[name.strip()] = amount
        else:
            every = amount
    return every, per


def _mib(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise KvDeckError(f"{what} must be a whole number of MiB") from None
    if value < 0:
        raise KvDeckError(f"{what} must not be negative")
    return value * MiB
