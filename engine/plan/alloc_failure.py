"""Name the component and size behind a llama.cpp allocation failure, from its log lines.

When llama.cpp cannot allocate, the C API only says NULL; the story is in the log: a size line
from the backend ("alloc_tensor_range: failed to allocate CPU buffer of size 230402949120",
"cudaMalloc failed: out of memory") followed by what was being built ("failed to allocate buffer
for kv cache", "failed to allocate compute pp buffers"). A user needs both in one sentence:
"not enough memory for the KV cache (214.58 GiB on CPU)". Pure Python, so it can be tested
without loading anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.core.units import format_bytes

# What was being built, from the line that ends the failure (most specific first).
_COMPONENTS = (
    ("buffer for kv cache", "the KV cache"),
    ("buffer for rs cache", "the recurrent state"),
    ("dsv4 compressor", "the compressed KV state"),
    ("compute", "the compute buffers"),
    ("output buffer", "the output buffer"),
    ("unable to allocate", "the model weights"),
)
_SIZED = (  # (pattern, bytes per unit); the device group is optional
    (re.compile(r"output buffer of size (?P<n>[\d.]+) MiB"), 1 << 20),
    (re.compile(r"failed to allocate (?P<dev>\S+) buffer of size (?P<n>\d+)"), 1),
    (re.compile(r"failed to allocate buffer of size (?P<n>\d+)"), 1),
    (re.compile(r"allocating (?P<n>[\d.]+) MiB on device (?P<dev>\d+): \w+ failed"), 1 << 20),
    (re.compile(r"attempted to allocate (?P<n>[\d.]+) MB"), 1 << 20),
)
_BUFFER = re.compile(r"unable to allocate (?P<dev>\S+) buffer")


def describe_allocation_failure(lines: Sequence[str]) -> str | None:
    """ "not enough memory for <component> (<size> on <device>)", or None if `lines` (recent
    warning/error log lines, oldest first) show no allocation failure."""
    text = [line.lower() for line in lines]
    component = next(
        (
            name
            for line in reversed(text)
            for key, name in _COMPONENTS
            if key in line and ("alloc" in line or "memory" in line)
        ),
        None,
    )
    if component is None:
        if any("bad_alloc" in line for line in text):  # a C++ container, sized by n_ctx & co
            return "not enough memory for llama.cpp's own bookkeeping (std::bad_alloc)"
        return None
    size, device = None, None
    for line in reversed(lines):
        for pattern, unit in _SIZED:
            m = pattern.search(line)
            if m:
                size = float(m["n"]) * unit
                dev = m.groupdict().get("dev")
                device = f"CUDA{dev}" if dev and dev.isdigit() else dev
                break
        if size is not None:
            break
    if device is None:
        m = next((_BUFFER.search(line) for line in reversed(lines) if _BUFFER.search(line)), None)
        device = m["dev"] if m else None
    where = f" on {device}" if device else ""
    return (
        f"not enough memory for {component} ({format_bytes(size)}{where})"
        if size is not None
        else f"not enough memory for {component}{where}"
    )
