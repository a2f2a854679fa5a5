"""Tensor buffer overrides (``llama_model_params.tensor_buft_overrides``), bound by hand.

llama-cpp-python declares the field as a bare pointer and binds no way to name a buffer type,
so the NULL-terminated array of ``llama_model_tensor_buft_override {pattern, buft}`` is built
here with ctypes. The only buffer type KV Deck overrides to is the CPU's: it is taken as the
CPU device's default buffer type (``ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(
CPU))``), which is ``ggml_backend_cpu_buffer_type()`` itself, the pointer llama.cpp's loader
compares against before it lets the CPU's extra types (CPU_REPACK) take the tensor.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp.llama_cpp as LL
from llama_cpp._ggml import libggml

from engine.plan.cpu_moe import override_patterns

_DEVICE_TYPE_CPU = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _cpu_buffer_type() -> int:
    by_type = libggml.ggml_backend_dev_by_type
    by_type.argtypes, by_type.restype = [ctypes.c_int], ctypes.c_void_p
    buft = libggml.ggml_backend_dev_buffer_type
    buft.argtypes, buft.restype = [ctypes.c_void_p], ctypes.c_void_p
    dev = by_type(_DEVICE_TYPE_CPU)
    if not dev:
        raise RuntimeError("llama.cpp has no CPU device")
    return int(buft(dev))


def cpu_overrides(patterns: Sequence[str]) -> ctypes.Array[_Override]:
    """A NULL-terminated override array sending tensors matching ``patterns`` to the CPU."""
    cpu = _cpu_buffer_type()
    arr = (_Override * (len(patterns) + 1))()
    for i, p in enumerate(patterns):
        arr[i].pattern, arr[i].buft = p.encode(), cpu
    return arr


def set_cpu_moe(mp: LL.llama_model_params, n_cpu_moe: int) -> list[object]:
    """Apply ``--n-cpu-moe n_cpu_moe`` to ``mp``; returns what must outlive the load call."""
    patterns = override_patterns(n_cpu_moe)
    if not patterns:
        return []
    arr = cpu_overrides(patterns)
    mp.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)  # type: ignore[assignment]  # declared as void*
    return [arr]
