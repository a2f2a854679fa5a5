"""Where memory goes right now: host RAM from psutil, GPU memory from NVML.

The dashboard splits each GPU into "this app", "other processes" and "free" several times a
second, so a snapshot must be cheap (NVML takes about 0.1 ms on an H100) and must never raise:
a missing driver or a lost GPU is a sentence to show, not a crash. No Qt here. Which GPU is
"CUDA<N>" and which part of its memory is this app's are rules over NVML's answers, kept apart
in ``engine.runtime.gpu_attribution``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from engine.core.memory_types import Device
from engine.runtime.gpu_attribution import GpuIdentity, Method, attribute_gpu_memory, cuda_order

try:
    import pynvml as _pynvml
except ImportError:  # a dependency, but a trimmed bundle may lack it: then there is no GPU view
    _pynvml = None

log = logging.getLogger("kvdeck.telemetry")

NVML_NOT_FOUND = "NVML not found (no NVIDIA driver)"
NO_GPU = "no NVIDIA GPU found"


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU as llama.cpp numbers it (``index`` is the N of "CUDA<N>"). ``used_bytes`` is
    total minus free, so it includes what the driver reserves (``reserved_bytes``), counted under
    other processes. ``attribution`` says how ``this_app_bytes`` was found; the note explains, in
    words, anything less than a per-process reading."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    this_app_bytes: int
    other_processes_bytes: int
    utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None
    pci_bus_id: str = ""
    reserved_bytes: int | None = None
    attribution: Method = "per-process"
    attribution_note: str | None = None

    @property
    def device_name(self) -> str:
        return f"CUDA{self.index}"


@dataclass(frozen=True)
class HostSnapshot:
    """Host RAM. ``used_bytes`` is total minus available, the same on every platform (unlike
    psutil's ``used``). ``cpu_pct``: the whole machine since the last snapshot. The RSS of the GUI
    and runtime includes the resident pages of a memory-mapped model file."""

    total_bytes: int
    available_bytes: int
    used_bytes: int
    this_app_rss_bytes: int
    cpu_pct: float


@dataclass(frozen=True)
class TelemetrySnapshot:
    """Everything measured at one moment (``time`` is wall-clock seconds, ``time.time()``)."""

    time: float
    host: HostSnapshot
    gpus: tuple[GpuSnapshot, ...]
    gpu_unavailable_reason: str | None
    notes: tuple[str, ...] = ()


def _text(value: Any) -> str:  # NVML strings are str or bytes, by binding version and field
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def fit_devices(snap: TelemetrySnapshot) -> list[Device]:
    """The memory pools of a snapshot as fit sees them (see ``Telemetry.devices``)."""
    return [Device("CPU", "cpu", snap.host.total_bytes, snap.host.available_bytes, "host RAM")] + [
        Device(g.device_name, "gpu", g.total_bytes - (g.reserved_bytes or 0), g.free_bytes, g.name)
        for g in snap.gpus
    ]


class Telemetry:
    """Reads host and GPU memory; one per app, safe from any thread. NVML is opened on first
    use and kept open (``nvmlInit`` costs milliseconds, a reading microseconds). ``nvml`` is the
    binding module (default ``pynvml``); tests pass a fake to check the GPU arithmetic."""

    def __init__(
        self, nvml: Any | None = None, env: Mapping[str, str] | None = None, self_pid: int | None = None
    ) -> None:
        self._nvml = nvml if nvml is not None else _pynvml
        self._env = env if env is not None else os.environ
        self._self_pid = os.getpid() if self_pid is None else self_pid
        self._lock = threading.Lock()
        self._opened = self._initialized = False  # tried to open; nvmlShutdown is owed
        self._reason: str | None = None
        self._notes: tuple[str, ...] = ()  # about the CUDA numbering, shown with every snapshot
        self._gpus: list[tuple[Any, GpuIdentity]] = []  # (handle, identity) in CUDA order
        self._baseline: dict[str, int] = {}  # uuid -> used bytes while no runtime was running
        self._mem_v2 = True  # NVML's v2 memory query works here (until it fails once)
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(interval=None)  # primes the counter so the first reading means something

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True  # a failure becomes _reason and is not retried until close()
        nv = self._nvml
        if nv is None:
            self._reason = "NVML not found (the nvidia-ml-py package is missing)"
            return
        try:
            nv.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError, or ctypes failing in a broken install
            self._reason = (
                NVML_NOT_FOUND if isinstance(exc, nv.NVMLError_LibraryNotFound) else f"NVML error: {exc}"
            )
            return
        self._initialized = True
        try:
            found = []
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                found.append(
                    (
                        handle,
                        GpuIdentity(
                            i,
                            _text(nv.nvmlDeviceGetUUID(handle)),
                            _text(nv.nvmlDeviceGetPciInfo(handle).busId),
                            _text(nv.nvmlDeviceGetName(handle)),
                        ),
                    )
                )
        except Exception as exc:  # noqa: BLE001 - as above: a reason, never an exception
            self._reason = f"NVML error: {exc}"
            return
        ordered, notes = cuda_order([ident for _, ident in found], self._env)
        handles = {ident.nvml_index: handle for handle, ident in found}
        self._gpus, self._notes = [(handles[g.nvml_index], g) for g in ordered], tuple(notes)
        if not found:
            self._reason = NO_GPU
        elif not ordered:
            self._reason = (
                f"no NVIDIA GPU is visible to llama.cpp (CUDA_VISIBLE_DEVICES="
                f"{self._env.get('CUDA_VISIBLE_DEVICES', '')!r})"
            )
        log.info("NVML: %d GPU(s), %d visible to llama.cpp", len(found), len(ordered))

    def close(self) -> None:
        """Release NVML; a later snapshot opens it again."""
        with self._lock:
            try:
                if self._initialized:
                    self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - closing must not fail
                log.debug("nvmlShutdown failed", exc_info=True)
            self._opened = self._initialized = False
            self._reason, self._gpus, self._notes = None, [], ()

    def snapshot(self, our_pids: Iterable[int]) -> TelemetrySnapshot:
        """Host and GPU memory now; ``our_pids`` are the GUI and its runtime children. Never
        raises: an unexpected failure is logged and reported as the reason for no GPU view.
        A snapshot with no runtime pid records each GPU's use as the baseline (see
        :func:`attribute_gpu_memory`)."""
        return self._snapshot(our_pids, may_set_baseline=True)

    def devices(self) -> list[Device]:
        """Memory pools for the fit budget: "CPU" plus one "CUDA<i>" per GPU llama.cpp sees.
        A GPU's total leaves out what the driver reserves, as ``cudaMemGetInfo`` does (the free
        figures agree exactly; seen on an H100)."""
        return fit_devices(self._snapshot([self._self_pid], may_set_baseline=False))

    def _snapshot(self, our_pids: Iterable[int], may_set_baseline: bool) -> TelemetrySnapshot:
        now = time.time()
        with self._lock:
            try:
                pids = frozenset(int(p) for p in our_pids)
                host = self._host(pids)
            except Exception:  # noqa: BLE001 - psutil failing is as unexpected as it gets
                log.exception("host telemetry failed")
                pids, host, may_set_baseline = frozenset(), HostSnapshot(0, 0, 0, 0, 0.0), False
            try:
                self._open()
                if self._reason is not None:
                    return TelemetrySnapshot(now, host, (), self._reason, self._notes)
                running = bool(pids - {self._self_pid})  # the GUI alone holds no CUDA memory
                gpus = tuple(
                    self._read_gpu(i, handle, ident, pids, running, may_set_baseline)
                    for i, (handle, ident) in enumerate(self._gpus)
                )
                return TelemetrySnapshot(now, host, gpus, None, self._notes)
            except getattr(self._nvml, "NVMLError", RuntimeError) as exc:
                return TelemetrySnapshot(now, host, (), f"NVML error: {exc}", self._notes)
            except Exception as exc:  # noqa: BLE001 - a view must never take the app down
                log.exception("GPU telemetry failed")
                return TelemetrySnapshot(now, host, (), f"telemetry error: {exc}", self._notes)

    def _read_gpu(
        self,
        index: int,
        handle: Any,
        ident: GpuIdentity,
        pids: frozenset[int],
        running: bool,
        may_set_baseline: bool,
    ) -> GpuSnapshot:
        nv = self._nvml
        total, free, reserved = self._memory(handle)
        used = max(0, total - free)
        if may_set_baseline and not running:
            self._baseline[ident.uuid] = used
        procs: list[tuple[int, int | None]] = []
        for lister in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                procs += [(int(p.pid), p.usedGpuMemory) for p in lister(handle)]
            except nv.NVMLError:  # not supported on this GPU or driver: rely on the other list
                pass
        split = attribute_gpu_memory(used, procs, pids, self._baseline.get(ident.uuid), running)
        util = self._optional(lambda: int(nv.nvmlDeviceGetUtilizationRates(handle).gpu))
        temp = self._optional(lambda: int(nv.nvmlDeviceGetTemperature(handle, 0)))  # 0: GPU die
        power = self._optional(lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW -> W
        return GpuSnapshot(
            index,
            ident.name,
            ident.uuid,
            total,
            used,
            free,
            split.this_app_bytes,
            split.other_processes_bytes,
            util,
            temp,
            power,
            ident.pci_bus_id,
            reserved,
            split.method,
            split.note,
        )

    def _memory(self, handle: Any) -> tuple[int, int, int | None]:
        """(total, free, reserved). The v2 query also tells what the driver reserves; older
        drivers and bindings lack it, so fall back to v1 and stop asking."""
        nv = self._nvml
        if self._mem_v2 and hasattr(nv, "nvmlMemory_v2"):
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
                return int(mem.total), int(mem.free), int(mem.reserved)
            except (nv.NVMLError, TypeError, AttributeError):
                self._mem_v2 = False
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        return int(mem.total), int(mem.free), None

    def _optional(self, read: Callable[[], Any]) -> Any:  # some GPUs lack power, temperature...
        try:
            return read()
        except self._nvml.NVMLError:
            return None

    def _host(self, pids: frozenset[int]) -> HostSnapshot:
        vm = psutil.virtual_memory()
        rss = 0
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
        for gone in set(self._procs) - pids:  # runtimes come and go; forget the old ones
            del self._procs[gone]
        return HostSnapshot(
            vm.total, vm.available, max(0, vm.total - vm.available), rss, psutil.cpu_percent(interval=None)
        )


class TelemetrySampler:
    """Snapshots on a background thread, ``hz`` times a second, into a ring buffer
    (``history``). ``pids`` is asked each time because runtimes come and go. ``callback`` runs
    on the sampler thread, so a Qt caller re-emits it as a signal instead of touching widgets.
    An exception from either is logged and never ends the thread."""

    def __init__(
        self,
        telemetry: Telemetry,
        pids: Callable[[], Iterable[int]],
        hz: float = 2.0,
        maxlen: int = 240,
        callback: Callable[[TelemetrySnapshot], None] | None = None,
    ) -> None:
        if not 1.0 <= hz <= 4.0:
            raise ValueError(f"sampling rate must be 1-4 Hz, not {hz}")
        self.telemetry, self._pids, self.callback = telemetry, pids, callback
        self.period = 1.0 / hz
        self.history: collections.deque[TelemetrySnapshot] = collections.deque(maxlen=maxlen)
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:  # already sampling: starting twice must not start two threads
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kvdeck-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait for it (one sample at most, a few ms)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                snap = self.telemetry.snapshot(self._pids())
                self.history.append(snap)
                if self.callback is not None:
                    self.callback(snap)
            except Exception:  # noqa: BLE001 - keep sampling; the failure is in the log
                self.errors += 1
                if self.errors <= 3:
                    log.exception("telemetry sample failed")
            next_at = max(next_at + self.period, time.monotonic())  # behind (suspend): resync
            self._stop.wait(next_at - time.monotonic())
