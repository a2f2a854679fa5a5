"""Telemetry: real host numbers from psutil, the CPU-only path as this machine really is, and the
GPU arithmetic (attribution, CUDA numbering) fed with NVML readings recorded on an H100.

Only the GPU arithmetic uses a stand-in for NVML (``FakeNvmlForArithmetic``): it replays
recorded values through pynvml's own function names and error classes, so ``Telemetry`` runs
its real code path. Everything else uses the real psutil and, where present, the real NVML.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest

from engine.core.memory_types import GiB, MiB
from engine.runtime.gpu_attribution import GpuIdentity, attribute_gpu_memory, cuda_order
from engine.runtime.telemetry import NO_GPU, NVML_NOT_FOUND, Telemetry, TelemetrySampler, TelemetrySnapshot

ME = os.getpid()

# Recorded on an H100 80GB HBM3 (driver 580.159.04) with one PyTorch child holding 2 GiB.
H100 = dict(
    name="NVIDIA H100 80GB HBM3",
    uuid="GPU-d6adc4d8-cac2-f691-713f-62c50d5c15f0",
    bus="00000000:00:06.0",
    total=85520809984,
    free=82317606912,
    reserved=503316480,
)
H100_CHILD_BYTES = 2690646016  # 2 GiB tensor plus the CUDA context


# --------------------------------------------------------------------------- the NVML stand-in
@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus: str
    total: int
    free: int
    reserved: int = 0
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    power_mw: int | None = 83985
    memory_error: type[Exception] | None = None


class FakeNvmlForArithmetic:
    """Replays per-GPU readings through pynvml's names; errors are pynvml's real classes."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(self, gpus: list[FakeGpu], init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.inits = self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=h.bus.encode())  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu, version: Any = None) -> Any:
        if h.memory_error is not None:
            raise h.memory_error()
        return SimpleNamespace(
            total=h.total, free=h.free, used=h.total - h.free - h.reserved, reserved=h.reserved
        )

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.compute]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: FakeGpu) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.graphics]

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=37, memory=5)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        return 35

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        if h.power_mw is None:
            raise pynvml.NVMLError_NotSupported()
        return h.power_mw


def h100(**changes: Any) -> FakeGpu:
    return FakeGpu(
        H100["name"], H100["uuid"], H100["bus"], H100["total"], H100["free"], H100["reserved"], **changes
    )


def nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.fixture
def sleeper():
    """A real child process, as the runtime is, so RSS and pid bookkeeping are real."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; b = bytearray(64 << 20); print('ready', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


# --------------------------------------------------------------------------- host, real psutil
def test_host_numbers_are_plausible(sleeper):
    tele = Telemetry()
    alone = tele.snapshot([ME]).host
    both = tele.snapshot([ME, sleeper.pid]).host
    vm = psutil.virtual_memory()
    assert abs(both.total_bytes - vm.total) < MiB
    assert 0 < both.available_bytes <= both.total_bytes
    assert both.used_bytes == both.total_bytes - both.available_bytes
    assert 10 * MiB < alone.this_app_rss_bytes < both.total_bytes
    # the child holds a 64 MiB buffer, so GUI + child is clearly more than the GUI alone
    assert both.this_app_rss_bytes > alone.this_app_rss_bytes + 48 * MiB
    assert 0.0 <= both.cpu_pct <= 100.0
    tele.close()


def test_a_runtime_that_ended_no_longer_counts(sleeper):
    tele = Telemetry()
    with_child = tele.snapshot([ME, sleeper.pid]).host.this_app_rss_bytes
    sleeper.kill()
    sleeper.wait()
    after = tele.snapshot([ME, sleeper.pid]).host.this_app_rss_bytes  # a stale pid list
    assert after < with_child - 48 * MiB


# --------------------------------------------------------------------------- this machine, as is
def test_real_snapshot_has_gpus_or_a_reason():
    tele = Telemetry()
    snap = tele.snapshot([ME])
    assert isinstance(snap, TelemetrySnapshot) and abs(snap.time - time.time()) < 5
    if nvml_works():
        assert snap.gpu_unavailable_reason is None or snap.gpus == ()
    else:
        assert snap.gpus == ()
        assert snap.gpu_unavailable_reason == NVML_NOT_FOUND
    devices = tele.devices()
    assert devices[0].name == "CPU" and devices[0].kind == "cpu"
    assert [d.name for d in devices[1:]] == [f"CUDA{g.index}" for g in snap.gpus]
    tele.close()


@pytest.mark.skipif(nvml_works(), reason="this machine has an NVIDIA driver")
def test_without_nvml_there_is_no_gpu_view_and_a_reason():
    snap = Telemetry().snapshot([ME])
    assert snap.gpus == () and snap.gpu_unavailable_reason == "NVML not found (no NVIDIA driver)"


def test_snapshot_never_raises():
    lost = FakeNvmlForArithmetic([h100(memory_error=pynvml.NVMLError_GpuIsLost)])
    snap = Telemetry(nvml=lost).snapshot([ME])
    assert snap.gpus == () and snap.gpu_unavailable_reason == "NVML error: GPU is lost"

    broken = FakeNvmlForArithmetic([h100(memory_error=ZeroDivisionError)])
    snap = Telemetry(nvml=broken).snapshot([ME])
    assert snap.gpu_unavailable_reason is not None
    assert snap.gpu_unavailable_reason.startswith("telemetry error")

    real = Telemetry()
    for pids in ([], [2**22 + 12345], ["not a pid"], [ME, ME, -1]):
        snap = real.snapshot(pids)  # type: ignore[arg-type]
        assert isinstance(snap, TelemetrySnapshot)


def test_snapshot_is_cheap():
    tele = Telemetry()
    tele.snapshot([ME])
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        tele.snapshot([ME])
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.005


# --------------------------------------------------------------------------- sampler
def test_sampler_runs_at_2_hz_and_stops_cleanly():
    seen: list[TelemetrySnapshot] = []
    sampler = TelemetrySampler(Telemetry(), lambda: [ME], hz=2, maxlen=100, callback=seen.append)
    sampler.start()
    time.sleep(1.5)
    sampler.stop()
    assert not sampler.running
    assert not any(t.name == "kvdeck-telemetry" for t in threading.enumerate())
    assert 3 <= len(sampler.history) <= 4  # samples at 0, 0.5, 1.0 and perhaps 1.5 s
    assert len(seen) == len(sampler.history)
    gaps = [b.time - a.time for a, b in zip(sampler.history, list(sampler.history)[1:])]
    assert all(0.4 < g < 0.65 for g in gaps)


def test_sampler_survives_exceptions_and_keeps_a_bounded_history():
    calls = {"n": 0}

    def flaky_pids() -> list[int]:
        calls["n"] += 1
        if calls["n"] % 2:
            raise OSError("pid source failed")
        return [ME]

    def bad_callback(snap: TelemetrySnapshot) -> None:
        raise RuntimeError("widget gone")

    sampler = TelemetrySampler(Telemetry(), flaky_pids, hz=4, maxlen=2, callback=bad_callback)
    sampler.start()
    time.sleep(1.2)
    assert sampler.running
    sampler.stop()
    assert sampler.errors >= 4 and len(sampler.history) == 2


def test_sampler_rate_is_bounded():
    with pytest.raises(ValueError):
        TelemetrySampler(Telemetry(), lambda: [ME], hz=10)


# --------------------------------------------------------------------------- GPU arithmetic
def test_recorded_h100_attributes_our_child():
    child = 4242
    nv = FakeNvmlForArithmetic([h100(compute=[(child, H100_CHILD_BYTES)])])
    tele = Telemetry(nvml=nv, env={}, self_pid=ME)
    gpu = tele.snapshot([ME, child]).gpus[0]
    used = H100["total"] - H100["free"]
    assert (gpu.index, gpu.device_name, gpu.name) == (0, "CUDA0", "NVIDIA H100 80GB HBM3")
    assert gpu.pci_bus_id == "00000000:00:06.0"  # bytes from the binding, decoded
    assert gpu.used_bytes == used and gpu.reserved_bytes == H100["reserved"]
    assert gpu.this_app_bytes == H100_CHILD_BYTES and gpu.attribution == "per-process"
    assert gpu.other_processes_bytes == used - H100_CHILD_BYTES  # the driver's reserve, mostly
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w) == (37, 35, 83.985)
    cuda0 = tele.devices()[1]  # as cudaMemGetInfo reports it: the driver's reserve left out
    assert (cuda0.free_bytes, cuda0.total_bytes) == (H100["free"], H100["total"] - H100["reserved"])
    tele.close()
    assert nv.shutdowns == 1


def test_process_in_both_lists_counts_once_and_others_are_others():
    nv = FakeNvmlForArithmetic(
        [
            h100(
                compute=[(10, 3 * GiB), (20, 1 * GiB)],
                graphics=[(10, 3 * GiB), (30, 256 * MiB)],
                power_mw=None,
            )
        ]
    )
    nv.gpus[0].free = H100["total"] - 6 * GiB
    gpu = Telemetry(nvml=nv, env={}, self_pid=ME).snapshot([ME, 10]).gpus[0]
    assert gpu.this_app_bytes == 3 * GiB
    assert gpu.other_processes_bytes == gpu.used_bytes - 3 * GiB
    assert gpu.power_w is None  # unsupported reading: None, not a failure


def test_empty_process_list_attributes_by_difference_from_the_baseline():
    gpu = h100()  # no processes listed, as in many containers
    tele = Telemetry(nvml=FakeNvmlForArithmetic([gpu]), env={}, self_pid=ME)
    before = tele.snapshot([ME]).gpus[0]  # no runtime yet: the baseline
    assert (before.this_app_bytes, before.attribution, before.attribution_note) == (
        0,
        "per-process",
        None,
    )  # nothing of ours can be there, so this is no estimate
    gpu.free -= 6 * GiB  # the runtime loads a model
    tele.devices()  # asking for devices mid-run must not move the baseline
    during = tele.snapshot([ME, 777]).gpus[0]
    assert during.attribution == "difference" and during.this_app_bytes == 6 * GiB
    assert during.other_processes_bytes == before.used_bytes
    assert "growth" in (during.attribution_note or "")


def test_attribution_rules():
    # our figures missing (WDDM): fall back to the baseline
    a = attribute_gpu_memory(10 * GiB, [(1, None), (2, 4 * GiB)], {1}, 5 * GiB)
    assert (a.this_app_bytes, a.other_processes_bytes, a.method) == (5 * GiB, 5 * GiB, "difference")
    # no list and no baseline: nothing can be said, and the note says so
    a = attribute_gpu_memory(10 * GiB, [], {1}, None)
    assert (a.this_app_bytes, a.other_processes_bytes, a.method) == (0, 10 * GiB, "unattributed")
    assert a.note
    # a listed GPU we do not use: ours is zero, by reading
    a = attribute_gpu_memory(10 * GiB, [(2, 9 * GiB)], {1}, None)
    assert (a.this_app_bytes, a.method, a.note) == (0, "per-process", None)
    # per-process figures can exceed total-minus-free for a moment: clamp, never negative
    a = attribute_gpu_memory(2 * GiB, [(1, 3 * GiB)], {1}, None)
    assert (a.this_app_bytes, a.other_processes_bytes) == (2 * GiB, 0)


def test_nvml_failures_read_as_sentences():
    missing = FakeNvmlForArithmetic([], init_error=pynvml.NVMLError_LibraryNotFound())
    assert Telemetry(nvml=missing).snapshot([ME]).gpu_unavailable_reason == NVML_NOT_FOUND
    driver = FakeNvmlForArithmetic([], init_error=pynvml.NVMLError_DriverNotLoaded())
    assert Telemetry(nvml=driver).snapshot([ME]).gpu_unavailable_reason == "NVML error: Driver Not Loaded"
    broken = Telemetry(nvml=FakeNvmlForArithmetic([], init_error=OSError("bad ELF header")))
    assert [broken.snapshot([ME]).gpu_unavailable_reason for _ in range(2)] == [
        "NVML error: bad ELF header"
    ] * 2  # a reason, never an exception, and not retried
    none = Telemetry(nvml=FakeNvmlForArithmetic([]), env={})
    assert none.snapshot([ME]).gpu_unavailable_reason == NO_GPU
    assert [d.name for d in none.devices()] == ["CPU"]


# --------------------------------------------------------------------------- CUDA numbering
A = GpuIdentity(0, "GPU-aaaa1111", "00000000:81:00.0", "NVIDIA H100 80GB HBM3")
B = GpuIdentity(1, "GPU-bbbb2222", "00000000:01:00.0", "NVIDIA H100 80GB HBM3")
C = GpuIdentity(2, "GPU-bbbb3333", "00000000:41:00.0", "NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize(
    "visible, expected",
    [
        (None, [B, C, A]),  # PCI bus order, whatever NVML's own numbering
        ("2,0", [A, B]),
        ("GPU-aaaa", [A]),  # a unique UUID prefix
        ("gpu-bbbb3333, 0", [C, B]),  # case and spaces do not matter
        ("1,7,0", [C]),  # CUDA stops at the first invalid entry
        ("0,0", [B]),  # ... and at a repeat
        ("GPU-bbbb", []),  # ambiguous prefix
        ("MIG-4f3e2d1c-0000-0000-0000-000000000000", []),
        ("", []),
    ],
)
def test_cuda_visible_devices(visible, expected):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    chosen, notes = cuda_order([A, B, C], env)
    assert chosen == expected
    assert bool(notes) == (visible not in (None, "", "2,0", "GPU-aaaa", "gpu-bbbb3333, 0"))


def test_mixed_gpus_warn_unless_pci_bus_order():
    small = GpuIdentity(1, "GPU-cccc", "00000000:02:00.0", "NVIDIA RTX A4000")
    assert cuda_order([A, small], {})[1]
    assert cuda_order([A, small], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})[1] == []


def test_telemetry_numbers_gpus_as_cuda_does():
    far = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-far", "00000000:C1:00.0", 80 * GiB, 70 * GiB)
    near = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-near", "00000000:05:00.0", 80 * GiB, 50 * GiB)
    nv = FakeNvmlForArithmetic([far, near])
    snap = Telemetry(nvml=nv, env={}).snapshot([ME])
    assert [(g.index, g.uuid) for g in snap.gpus] == [(0, "GPU-near"), (1, "GPU-far")]
    only = Telemetry(nvml=nv, env={"CUDA_VISIBLE_DEVICES": "1"})
    devices = only.devices()  # one reading: the host's free RAM moves between two
    assert [(d.name, d.free_bytes) for d in devices] == [("CPU", devices[0].free_bytes), ("CUDA0", 70 * GiB)]
    hidden = Telemetry(nvml=nv, env={"CUDA_VISIBLE_DEVICES": ""}).snapshot([ME])
    assert hidden.gpus == () and "CUDA_VISIBLE_DEVICES" in (hidden.gpu_unavailable_reason or "")
