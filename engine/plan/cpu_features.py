"""The CPU features llama.cpp's CPU backend was built for, found without loading it.

Which weights the CPU backend repacks (`engine.plan.cpu_repack`) depends on `ggml_cpu_has_avx2()`,
`ggml_cpu_has_neon()` and friends. In llama.cpp 0c1e570 those are **compile-time** constants
(`ggml/src/ggml-cpu/ggml-cpu.c`: `#if defined(__AVX2__) return 1`), so the truth is in the
installed `libggml-cpu`, not in the processor: the CUDA build of this project reports AVX2 but
not AVX512 on a Xeon that has AVX512. The parent process never loads llama.cpp, so the library
is read as a file: each exported `ggml_cpu_has_*` is a two-instruction function returning 0 or
1, decoded here for x86-64 and AArch64 ELF. Where that is not possible (macOS, Windows, a build
with one library per CPU variant) the processor's own features stand in, which is what a
native build (`GGML_NATIVE`, llama-cpp-python's default when it compiles) was compiled for:
Linux `/proc/cpuinfo`, macOS `sysctl`. Anything else: unknown (None), and the plan says so
instead of guessing.

`KVDECK_CPU_FEATURES` overrides detection: a comma list of ggml feature names as
`llama_print_system_info()` prints them (`AVX2,AVX512`), `none` for a build without any, or
`unknown`.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: ggml feature names (as in `llama_print_system_info`) that decide repacking or buffer types.
FEATURES = (
    "AVX2",
    "AVX512",
    "AVX512_VNNI",
    "AMX_INT8",
    "NEON",
    "DOTPROD",
    "MATMUL_INT8",
    "SVE",
    "SME",
    "VXE",
    "RISCV_V",
    "KLEIDIAI",
)
_HAS_FN = {f"ggml_cpu_has_{n.lower()}": n for n in FEATURES if n != "KLEIDIAI"}

# /proc/cpuinfo flag (x86 "flags", ARM "Features", s390x "features") -> ggml name.
_LINUX_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX512",
    "avx512_vnni": "AVX512_VNNI",
    "amx_int8": "AMX_INT8",
    "asimd": "NEON",
    "asimddp": "DOTPROD",
    "i8mm": "MATMUL_INT8",
    "sve": "SVE",
    "sme": "SME",
    "vxe": "VXE",
}
# macOS sysctl names -> ggml name (hw.optional.* on Apple silicon, machdep.cpu.* on Intel).
_MAC_KEYS = {
    "hw.optional.neon": "NEON",
    "hw.optional.arm.FEAT_DotProd": "DOTPROD",
    "hw.optional.arm.FEAT_I8MM": "MATMUL_INT8",
    "hw.optional.arm.FEAT_SME": "SME",
}
_MAC_WORDS = {"AVX2": "AVX2", "AVX512F": "AVX512", "AVX512VNNI": "AVX512_VNNI"}


@dataclass(frozen=True)
class CpuFeatures:
    """What `ggml_cpu_has_*` answers in the runtime that will load the model."""

    flags: frozenset[str]  # ggml names from FEATURES
    sve_bytes: int = 0  # ggml_cpu_get_sve_cnt(): the SVE vector length in bytes (runtime)
    source: str = ""  # where the answer came from, in words

    def has(self, name: str) -> bool:
        return name in self.flags

    def label(self) -> str:
        shown = [f for f in FEATURES if f in self.flags]
        return "/".join(shown) or "no SIMD features"

    @classmethod
    def of(cls, *names: str, sve_bytes: int = 0, source: str = "given") -> CpuFeatures:
        return cls(frozenset(n.upper() for n in names), sve_bytes, source)


# --- the processor ---------------------------------------------------------------------------


def parse_cpuinfo(text: str, sve_bytes: int = 0) -> CpuFeatures | None:
    """Features from Linux /proc/cpuinfo text (the first processor's flag line)."""
    m = re.search(r"^(?:flags|Features|features)\s*:(.*)$", text, re.M)
    if m is None:
        return None
    words = set(m.group(1).split())
    flags = {name for flag, name in _LINUX_FLAGS.items() if flag in words}
    if "SVE" not in flags:
        sve_bytes = 0
    return CpuFeatures(frozenset(flags), sve_bytes, "/proc/cpuinfo")


def parse_sysctl(text: str) -> CpuFeatures:
    """Features from `sysctl hw.optional machdep.cpu` output (`name: value` lines)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if _MAC_KEYS.get(key) and value == "1":
            flags.add(_MAC_KEYS[key])
        elif key.startswith("machdep.cpu.") and key.endswith("features"):
            flags.update(name for word, name in _MAC_WORDS.items() if word in value.split())
    return CpuFeatures(frozenset(flags), 0, "sysctl")


def parse_system_info(text: str) -> CpuFeatures | None:
    """Features from `llama_print_system_info()` ("CPU : SSE3 = 1 | AVX2 = 1 | ..."), as a
    runtime child reports them; None when the text has no CPU section."""
    if "CPU :" not in text:
        return None
    cpu = text.split("CPU :", 1)[1].split("\n", 1)[0]
    pairs = dict(re.findall(r"(\w+) = (\w+)", cpu))
    flags = {n for n in FEATURES if pairs.get(n) == "1"}
    sve = int(pairs.get("SVE_CNT", "0") or 0)
    return CpuFeatures(frozenset(flags), sve, "llama_print_system_info")


def host_features() -> CpuFeatures | None:
    """The processor's features, or None where this platform is not supported."""
    system, machine = platform.system(), platform.machine().lower()
    if machine.startswith(("riscv", "ppc", "powerpc", "loongarch")):
        return None  # RISC-V rules depend on the vector length and zvfh; not modelled
    try:
        if system == "Linux":
            text = Path("/proc/cpuinfo").read_text(errors="replace")
            sve = 0
            if machine in ("aarch64", "arm64"):
                vl = Path("/proc/sys/abi/sve_default_vector_length")
                sve = int(vl.read_text().split()[0]) if vl.exists() else 0
            return parse_cpuinfo(text, sve)
        if system == "Darwin":
            out = subprocess.run(
                ["sysctl", "hw.optional", "machdep.cpu"], capture_output=True, text=True, timeout=2
            ).stdout
            return parse_sysctl(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return None


# --- the build -------------------------------------------------------------------------------


def _elf_functions(path: Path) -> tuple[int, dict[str, bytes]] | None:
    """(e_machine, {exported symbol: first 16 bytes of code}) of a little-endian ELF64 file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    machine = struct.unpack_from("<H", data, 18)[0]
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynsym = next((s for s in sections if s[1] == 11), None)  # SHT_DYNSYM
    if dynsym is None:
        return None
    strtab = sections[dynsym[6]]
    out: dict[str, bytes] = {}
    for off in range(dynsym[4], dynsym[4] + dynsym[5], 24):
        st_name, st_info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", data, off)
        if not 0 < shndx < len(sections) or st_info & 0xF != 2:  # defined functions only
            continue
        start = strtab[4] + st_name
        name = data[start : data.index(b"\0", start)].decode("ascii", "replace")
        if name.startswith("ggml_cpu_has_") or "kleidiai" in name or "amx_buffer_type" in name:
            sec = sections[shndx]
            pos = sec[4] + value - sec[3]
            out[name] = data[pos : pos + 16]
    return machine, out


def _returned_constant(machine: int, code: bytes) -> int | None:
    """The constant a `return 0;` / `return 1;` function returns, or None if not that."""
    if machine == 62:  # x86-64: [endbr64] mov eax, imm32 | xor eax, eax
        if code.startswith(b"\xf3\x0f\x1e\xfa"):
            code = code[4:]
        if code[:1] == b"\xb8":
            value: int = struct.unpack_from("<I", code, 1)[0]
            return value
        return 0 if code[:2] in (b"\x31\xc0", b"\x33\xc0") else None
    if machine == 183:  # AArch64: [bti/pac hints] mov w0, #imm | mov w0, wzr; ret
        for (word,) in struct.iter_unpack("<I", code[:16]):
            if word & 0xFFFFF01F == 0xD503201F:  # HINT (bti c, paciasp, nop)
                continue
            if word & 0xFFE0001F == 0x52800000:  # MOVZ w0, #imm16
                return int((word >> 5) & 0xFFFF)
            return 0 if word == 0x2A1F03E0 else None  # ORR w0, wzr, wzr
    return None


def parse_library(path: Path) -> CpuFeatures | None:
    """The compiled-in features of a libggml-cpu ELF file, or None if it cannot be read."""
    try:
        found = _elf_functions(path)
    except (OSError, struct.error, ValueError, IndexError):
        return None
    if found is None:
        return None
    machine, funcs = found
    flags: set[str] = set()
    for fn, name in _HAS_FN.items():
        if fn not in funcs:
            continue
        value = _returned_constant(machine, funcs[fn])
        if value is None:
            return None  # not the constant function this module understands
        if value:
            flags.add(name)
    if not any(fn in funcs for fn in _HAS_FN):
        return None
    if any("kleidiai" in n for n in funcs):
        flags.add("KLEIDIAI")
    if any("amx_buffer_type" in n for n in funcs):
        flags.add("AMX_INT8")
    return CpuFeatures(frozenset(flags), 0, f"{path.name} (compiled-in)")


def build_features(lib_dir: Path | None) -> CpuFeatures | None:
    """Features of the single libggml-cpu in `lib_dir` (None for several CPU variants)."""
    if lib_dir is None or not lib_dir.is_dir():
        return None
    libs = sorted(p for p in lib_dir.iterdir() if p.name.startswith("libggml-cpu"))
    variants = {p.name.split(".so")[0] for p in libs if ".so" in p.name}
    if len(variants) != 1:
        return None  # GGML_CPU_ALL_VARIANTS picks one at run time; or not an ELF build
    return parse_library(libs[0])


def combine(build: CpuFeatures | None, host: CpuFeatures | None) -> CpuFeatures | None:
    """The build decides (its answers are compile-time); the SVE vector length is read at run
    time from the processor. Without a readable build, a native build for the host is assumed."""
    if build is not None:
        sve = host.sve_bytes if host is not None and build.has("SVE") else 0
        return CpuFeatures(build.flags, sve, build.source)
    if host is not None:
        return CpuFeatures(host.flags, host.sve_bytes, f"{host.source}, assuming a native build")
    return None


@functools.lru_cache(maxsize=4)
def _detect(override: str | None, lib_dir: str | None) -> CpuFeatures | None:
    if override is not None:
        value = override.strip()
        if value.lower() == "unknown":
            return None
        names = [] if value.lower() == "none" else [x.strip() for x in value.split(",") if x]
        sve = next((int(n.split("=")[1]) for n in names if n.upper().startswith("SVE_CNT=")), 0)
        names = [n for n in names if "=" not in n]
        return CpuFeatures.of(*names, sve_bytes=sve, source="KVDECK_CPU_FEATURES")
    return combine(build_features(Path(lib_dir) if lib_dir else None), host_features())


def detect() -> CpuFeatures | None:
    """The features the installed runtime's CPU backend will report (cached), or None."""
    from engine.core.build import runtime_lib_dir

    lib = runtime_lib_dir()
    return _detect(os.environ.get("KVDECK_CPU_FEATURES"), str(lib) if lib else None)
