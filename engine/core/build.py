"""What the installed llama.cpp runtime build can do, found without loading it.

The parent process never loads llama.cpp (a crash there would take the window down), so the
backends are read from the shared libraries the llama-cpp-python wheel ships: a CUDA build has
``libggml-cuda``, a Metal build ``libggml-metal`` and so on. That is what decides whether GPU
memory appears in a plan at all. A leaf: the plan (CPU repacking reads the build's CPU library)
and the runtime both ask it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

_BACKENDS = {
    "cuda": "ggml-cuda",
    "metal": "ggml-metal",
    "vulkan": "ggml-vulkan",
    "hip": "ggml-hip",
    "sycl": "ggml-sycl",
}


@functools.lru_cache(maxsize=1)
def runtime_lib_dir() -> Path | None:
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


@functools.lru_cache(maxsize=1)
def runtime_backends() -> frozenset[str]:
    """GPU backends built into the runtime ("cuda", "metal", ...); empty for a CPU-only build."""
    lib = runtime_lib_dir()
    if lib is None or not lib.is_dir():
        return frozenset()
    names = [p.name for p in lib.iterdir()]
    return frozenset(b for b, stem in _BACKENDS.items() if any(stem in n for n in names))


def rpc_in_build() -> bool:
    """Whether the runtime has llama.cpp's RPC backend (built with -DGGML_RPC=ON: it ships
    ``libggml-rpc``); the runtime child's ``llama_supports_rpc()`` says the same."""
    lib = runtime_lib_dir()
    return lib is not None and lib.is_dir() and any("ggml-rpc" in p.name for p in lib.iterdir())


def gpu_backend() -> str:
    """The backend that GPU devices would use: "cuda", "metal", ... or "cpu"."""
    for name in ("cuda", "hip", "metal", "vulkan", "sycl"):
        if name in runtime_backends():
            return name
    return "cpu"


#: What a llama.cpp CUDA process holds on a GPU besides its buffers (context, kernel images,
#: cuBLAS workspace) and besides the plan's "driver" component (engine.plan.cuda_driver: buffers
#: rounded to 2 MiB, page tables of pinned memory, 2 MiB per context), which the plan counts
#: itself. On an H100, driver 580, seven loads held 522.1-523.2 MiB outside their logged
#: buffers (benchmarks/results/gpu-memory-2026-11-25.json, footprint), of which 4.08-5.16 MiB
#: were that driver term: 518.02-518.04 MiB remain in every one. Override with
#: KVDECK_CUDA_RESERVE_MIB where a driver or GPU differs.
CUDA_RESERVE_MIB = 519


def cuda_reserve_bytes() -> int:
    try:
        return int(float(os.environ.get("KVDECK_CUDA_RESERVE_MIB", CUDA_RESERVE_MIB)) * 2**20)
    except ValueError:
        return CUDA_RESERVE_MIB * 2**20
