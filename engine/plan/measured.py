"""Turn llama.cpp's context-creation log into a MemoryPlan.

llama.cpp reports what it allocates only through its log (the per-buffer breakdown is a C++
API that ctypes cannot call). Two kinds of numbers appear there (notes §0): `size = …` lines
are exact tensor sums, printed with two decimals of MiB; `… buffer size = …` lines are what the
backend allocated (padded), and print 0.00 for weights and KV in a no_alloc dry run. The parser
keeps both: KV and recurrent allocations carry the tensor sums (so they can be compared with
the analytic formulas), the buffer sizes are quoted in `detail` and kept in `buffers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.core.memory_types import Allocation, MemoryPlan, MiB, PlanSettings

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_RE_PARAM = re.compile(
    r"^llama_context: (n_ctx|n_ctx_seq|n_batch|n_ubatch|n_seq_max|"
    r"n_outputs_max|n_rs_seq|flash_attn|kv_unified)\s+= (\S+)"
)
_RE_BUFFER = re.compile(r"^(\w+):\s+(\S+)\s+(model|KV|RS|output|compute) buffer size = \s*" + _NUM + " MiB")
_RE_KV = re.compile(
    r"^(\w+): size = \s*" + _NUM + r" MiB \(\s*(\d+) cells,\s*(\d+) layers,"
    r"\s*(\d+)/(\d+) seqs\), K \((\w+)\):\s*" + _NUM + r" MiB, V \((\w+)\):\s*" + _NUM + " MiB"
)
_RE_RS = re.compile(
    r"^llama_memory_recurrent: size = \s*" + _NUM + r" MiB \(\s*(\d+) cells,"
    r"\s*(\d+) layers,\s*(\d+) seqs\s+(\d+) rs_seq\), R \((\w+)\):\s*"
    + _NUM
    + r" MiB, S \((\w+)\):\s*"
    + _NUM
    + r" MiB(?:, P \((\w+)\):\s*"
    + _NUM
    + " MiB)?"
)
_RE_STATE = re.compile(
    r"^llama_dsv4_comp_state: (\w+) ratio = (\d+), state = (\d+) x (\d+), "
    r"streams = (\d+), rs_seq = (\d+), layers = (\d+), size = \s*" + _NUM + " MiB"
)
_RE_STATE_BUFFER = re.compile(
    r"^llama_dsv4_comp_state:\s+(\S+) DSV4 \w+ state buffer size = \s*" + _NUM + " MiB"
)
# llama_memory_hybrid_idx announces its indexer cache from a lambda: "operator(): creating …"
_RE_CREATING = re.compile(r"^(\w+(?:\(\))?): creating\s+(.*?)\s*(?:KV )?cache(?:, size = (\d+) cells)?$")
_RE_LAYER_DEV = re.compile(
    r"^(llama_kv_cache|llama_memory_recurrent|llama_dsv4_comp_state)[:,] "
    r"layer\s+(\d+): dev = (\S+)"
)
_RE_VPAD = re.compile(r"padding V cache to (\d+)")
# A Gemma 4 assistant's layers are views of the target's K/V: "layer 0: sharing with layer 2".
_RE_SHARED = re.compile(r"^llama_kv_cache: layer\s+\d+: sharing with layer")


def device_of(buffer_type: str) -> str:
    """llama.cpp buffer type name -> memory pool: host types are "CPU", "CUDA0" stays."""
    m = re.match(r"^(CUDA\d+|ROCm\d+|Vulkan\d+|SYCL\d+|MUSA\d+)", buffer_type)
    if m:
        return m.group(1).replace("ROCm", "CUDA").replace("MUSA", "CUDA")
    if buffer_type.startswith("CPU") or buffer_type.endswith("_Host") or buffer_type == "Host":
        return "CPU"
    return buffer_type


@dataclass
class CacheLine:
    """One `llama_kv_cache: size = …` (or recurrent) line with the sub-cache it belongs to."""

    kind: str  # "kv", "base", "swa", "indexer", "recurrent", … (from the `creating` line)
    total_mib: str  # exactly as printed ("33.75")
    cells: int
    layers: int
    seqs: int
    streams: int  # "n_seq_max/n_stream" in the KV line; rs_seq for recurrent
    parts: dict[str, tuple[str, str]]  # "K"/"V" (or "R"/"S"/"P") -> (type, MiB as printed)
    buffers: dict[str, float] = field(default_factory=dict)  # buffer type -> MiB
    layer_devices: dict[int, str] = field(default_factory=dict)  # from DEBUG lines

    @property
    def bytes(self) -> int:
        """The tensor sum rebuilt from the printed MiB (±0.005 MiB)."""
        return round(float(self.total_mib) * MiB)


class MemoryLogParser:
    """Feed llama.cpp log lines (whole lines, any order of contexts is not supported: one
    model + one context per parser) and read the result as a MemoryPlan."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.kv_caches: list[CacheLine] = []
        self.recurrent: list[CacheLine] = []
        self.states: list[CacheLine] = []  # DSV4 compressor states (kind "csa state", …)
        self.buffers: dict[tuple[str, str], float] = {}  # (component, buffer type) -> MiB
        self.flash_attn: bool | None = None
        self.v_padded_to: int | None = None
        self.errors: list[str] = []
        self.cells_announced: dict[str, int] = {}  # "SWA" -> cells from the `creating` line
        self._pending_kind = "kv"
        self._pending_buffers: dict[str, float] = {}
        self._pending_devs: dict[int, str] = {}
        self._pending_shared = 0
        self.shared_layers = 0  # KV layers that are views of another context's cache (no memory)
        self._rs_buffers: dict[str, float] = {}
        self._rs_devs: dict[int, str] = {}
        self._state_buffers: dict[str, float] = {}
        self._state_devs: dict[int, str] = {}

    def feed(self, line: str) -> None:
        """Consume one log line (trailing newline optional); unknown lines are ignored."""
        line = line.rstrip("\n")
        if m := _RE_PARAM.match(line):
            self.params[m.group(1)] = m.group(2)
        elif m := _RE_BUFFER.match(line):
            func, buft, comp, mib = m.groups()
            key = {"model": "weights", "KV": "kv", "RS": "recurrent"}.get(comp, comp)
            self.buffers[(key, buft)] = self.buffers.get((key, buft), 0.0) + float(mib)
            if comp == "KV":
                self._pending_buffers[buft] = float(mib)
            elif comp == "RS":
                self._rs_buffers[buft] = float(mib)
        elif m := _RE_KV.match(line):
            g = m.groups()
            shared, self._pending_shared = self._pending_shared, 0
            if shared >= int(g[3]):  # every layer a view: its "size =" counts the target's tensors
                self.shared_layers += shared
                self._pending_kind, self._pending_buffers, self._pending_devs = "kv", {}, {}
                return
            self.kv_caches.append(
                CacheLine(
                    self._pending_kind,
                    g[1],
                    int(g[2]),
                    int(g[3]),
                    int(g[4]),
                    int(g[5]),
                    {"K": (g[6], g[7]), "V": (g[8], g[9])},
                    self._pending_buffers,
                    self._pending_devs,
                )
            )
            self._pending_kind, self._pending_buffers, self._pending_devs = "kv", {}, {}
        elif m := _RE_RS.match(line):
            g = m.groups()
            parts = {"R": (g[5], g[6]), "S": (g[7], g[8])}
            if g[9]:
                parts["P"] = (g[9], g[10])
            self.recurrent.append(
                CacheLine(
                    "recurrent",
                    g[0],
                    int(g[1]),
                    int(g[2]),
                    int(g[3]),
                    int(g[4]),
                    parts,
                    self._rs_buffers,
                    self._rs_devs,
                )
            )
            self._rs_buffers, self._rs_devs = {}, {}
        elif m := _RE_STATE_BUFFER.match(line):
            self._state_buffers[m.group(1)] = float(m.group(2))
            self.buffers[("recurrent", m.group(1))] = self.buffers.get(
                ("recurrent", m.group(1)), 0.0
            ) + float(m.group(2))
        elif m := _RE_STATE.match(line):  # cells = state rows, streams field = rs_seq
            g = m.groups()  # parts: "state" -> ("f32", "<rows> x <n_embd_state>")
            self.states.append(
                CacheLine(
                    f"{g[0]} state",
                    g[7],
                    int(g[2]),
                    int(g[6]),
                    int(g[4]),
                    int(g[5]),
                    {"state": ("f32", f"{g[2]} x {g[3]}")},
                    self._state_buffers,
                    self._state_devs,
                )
            )
            self._state_buffers, self._state_devs = {}, {}
        elif m := _RE_CREATING.match(line):
            what = m.group(2).strip()
            kind = {
                "non-SWA": "base",
                "SWA": "swa",
                "main": "kv",
                "DSV4 CSA compressed": "csa",
                "DSV4 HCA compressed": "hca",
                "DSV4 lightning-indexer": "indexer",
            }.get(what, what.lower())
            self._pending_kind = kind
            if m.group(3):
                self.cells_announced[kind] = int(m.group(3))
        elif _RE_SHARED.match(line):
            self._pending_shared += 1
        elif m := _RE_LAYER_DEV.match(line):
            target = {"llama_kv_cache": self._pending_devs, "llama_memory_recurrent": self._rs_devs}.get(
                m.group(1), self._state_devs
            )
            target[int(m.group(2))] = m.group(3)
        elif "Flash Attention enabled" in line:
            self.flash_attn = True
        elif "Flash Attention not supported, set to disabled" in line:
            self.flash_attn = False
        elif m := _RE_VPAD.search(line):
            self.v_padded_to = int(m.group(1))
        elif re.search(r"\b(error|failed|requires|does not|must be)\b", line, re.I):
            self.errors.append(line.strip())

    # --- results -------------------------------------------------------------------------

    def param(self, name: str, default: int = 0) -> int:
        value = self.params.get(name)
        return int(value) if value is not None and value.isdigit() else default

    def resolved_flash_attn(self) -> bool | None:
        """True/False once known: forced by the settings line or resolved by the probe."""
        if self.flash_attn is not None:
            return self.flash_attn
        return {"enabled": True, "disabled": False}.get(self.params.get("flash_attn", ""))

    def _split(self, cache: CacheLine, component: str) -> list[Allocation]:
        """Place one cache's tensor sum on devices: by buffer when there is one, else by the
        per-layer device lines (DEBUG), else on the CPU."""
        devs: dict[str, float] = {}
        for dev in cache.layer_devices.values():
            devs[device_of(dev)] = devs.get(device_of(dev), 0) + 1
        if not devs and sum(cache.buffers.values()) > 0:
            for buft, mib in cache.buffers.items():  # allocated bytes per device: proportional
                devs[device_of(buft)] = devs.get(device_of(buft), 0.0) + mib
        if not devs:  # a dry run prints 0.00 buffers: the caller may re-split (exact_plan)
            for buft in cache.buffers or {"CPU": 0.0}:
                devs[device_of(buft)] = 1
        total, n = cache.bytes, sum(devs.values())
        bufs = ", ".join(f"{b} buffer {v:.2f} MiB" for b, v in cache.buffers.items())
        parts = ", ".join(f"{k} ({t}) {v} MiB" for k, (t, v) in cache.parts.items())
        what = (
            f"{cache.kind} cache: {cache.cells} cells × {cache.layers} layers, "
            f"{cache.seqs} seqs: {parts} (log tensor sum {cache.total_mib} MiB"
            + (f"; {bufs})" if bufs else ")")
        )
        out, given = [], 0
        for i, (dev, count) in enumerate(devs.items()):
            share = total - given if i == len(devs) - 1 else int(total * count // n)
            given += share
            out.append(Allocation(component, dev, share, what))  # type: ignore[arg-type]
        return out

    def result(self, settings: PlanSettings, source: str = "exact") -> MemoryPlan:
        """The parsed plan. Weights come from `model buffer size` lines only when they are
        non-zero (a dry run prints 0.00: the caller adds weights itself)."""
        allocs: list[Allocation] = []
        for (component, buft), mib in self.buffers.items():
            if component in ("weights", "output", "compute") and mib > 0:
                allocs.append(
                    Allocation(
                        component,  # type: ignore[arg-type]  # checked by the condition above
                        device_of(buft),
                        round(mib * MiB),
                        f"{buft} {component} buffer {mib:.2f} MiB (log)",
                    )
                )
        for cache in self.kv_caches:
            allocs += self._split(cache, "kv")
        for cache in self.recurrent + self.states:
            if cache.layers:
                allocs += self._split(cache, "recurrent")
        merged: dict[tuple[str, str], Allocation] = {}
        for a in allocs:  # one allocation per (component, device), details joined
            key = (a.component, a.device)
            if key in merged:
                old = merged[key]
                a = Allocation(a.component, a.device, old.bytes + a.bytes, old.detail + "; " + a.detail)
            merged[key] = a
        swa = [c.cells for c in self.kv_caches if c.kind == "swa"]
        full = [c.cells for c in self.kv_caches if c.kind != "swa"]
        notes = tuple(self.errors)
        if self.shared_layers:
            notes += (
                f"{self.shared_layers} KV layers are views of the target's cache (no memory of their own)",
            )
        if self.v_padded_to:
            notes += (
                f"V cache padded to width {self.v_padded_to} (flash attention off, "
                "V widths differ across layers)",
            )
        return MemoryPlan(
            source=source,  # type: ignore[arg-type]
            settings=settings,
            n_ctx=self.param("n_ctx"),
            n_ctx_seq=self.param("n_ctx_seq"),
            kv_cells=full[0] if full else 0,
            kv_cells_swa=swa[0] if swa else 0,
            allocations=tuple(merged.values()),
            notes=notes,
            flash_attn_resolved=self.resolved_flash_attn(),
        )
