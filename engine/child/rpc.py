"""llama.cpp's RPC backend (ggml-rpc) inside the runtime child: use workers, or be one.

Using workers is what llama.cpp's ``--rpc`` does (common/arg.cpp, ``add_rpc_devices``): look
the RPC backend up by name, fetch ``ggml_backend_rpc_add_server`` through the registry's proc
address, call it per endpoint and register the returned backend. The remote devices then are
ordinary GPU-type devices, and ``llama_model_load`` puts them ahead of local GPUs without being
told (src/llama.cpp, default device selection). A registration cannot be undone, so the set of
workers belongs to the process: the parent starts a new child to drop one.

Being a worker is what llama.cpp's ``rpc-server`` does (tools/rpc/rpc-server.cpp): pick devices
(the named ones, else every accelerator, else the CPU) and call ``ggml_backend_rpc_start_server``,
which serves clients one after another until the process ends.

ggml-rpc aborts the process on any connection failure, so the parent has probed each endpoint
first (engine.runtime.workers). The functions are not bound by llama-cpp-python; they are looked
up through libllama, in the libggml it uses.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp.llama_cpp as LL

from engine.core.memory_types import rpc_device_name

_P = ctypes.c_void_p
_SIZE = ctypes.c_size_t
_DEV_CPU, _DEV_ACCEL = 0, 3  # enum ggml_backend_dev_type (ggml-backend.h)


def _bind(name: str, argtypes: list[Any], restype: Any) -> Any:
    # through libllama's handle, so the symbols resolve to the libggml that libllama uses: pip
    # installs the wheel's library symlinks as copies, so llama_cpp._ggml's "libggml.so" is a
    # second copy of libggml with a registry of its own, and devices registered there are
    # invisible to llama_model_load
    f = getattr(LL._lib, name)
    f.argtypes, f.restype = argtypes, restype
    return f


_reg_by_name = _bind("ggml_backend_reg_by_name", [ctypes.c_char_p], _P)
_reg_name = _bind("ggml_backend_reg_name", [_P], ctypes.c_char_p)
_proc_address = _bind("ggml_backend_reg_get_proc_address", [_P, ctypes.c_char_p], _P)
_register = _bind("ggml_backend_register", [_P], None)
_dev_count = _bind("ggml_backend_dev_count", [], _SIZE)
_dev_get = _bind("ggml_backend_dev_get", [_SIZE], _P)
_dev_by_name = _bind("ggml_backend_dev_by_name", [ctypes.c_char_p], _P)
_dev_name = _bind("ggml_backend_dev_name", [_P], ctypes.c_char_p)
_dev_description = _bind("ggml_backend_dev_description", [_P], ctypes.c_char_p)
_dev_type = _bind("ggml_backend_dev_type", [_P], ctypes.c_int)
_dev_reg = _bind("ggml_backend_dev_backend_reg", [_P], _P)
_dev_memory = _bind("ggml_backend_dev_memory", [_P, ctypes.POINTER(_SIZE), ctypes.POINTER(_SIZE)], None)

_ADD_SERVER = ctypes.CFUNCTYPE(_P, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, _SIZE, _SIZE, ctypes.POINTER(_P))


def supported() -> bool:
    """Whether this build has the RPC backend (llama.cpp's own ``llama_supports_rpc``)."""
    return bool(LL.llama_supports_rpc())


def _rpc_function(name: str, prototype: Any) -> Any:
    if not supported():
        raise RuntimeError("this llama.cpp runtime was built without RPC support (-DGGML_RPC=ON)")
    reg = _reg_by_name(b"RPC")
    address = _proc_address(reg, name.encode())
    if not address:
        raise RuntimeError(f"the RPC backend does not export {name}")
    return prototype(address)


def add_servers(endpoints: list[str]) -> None:
    """Register every worker's devices, as ``--rpc`` does; the parent probed them first."""
    if not endpoints:
        return
    add = _rpc_function("ggml_backend_rpc_add_server", _ADD_SERVER)
    for endpoint in endpoints:
        reg = add(endpoint.encode())
        if reg:
            _register(reg)


def _memory(dev: int) -> tuple[int, int]:
    free, total = _SIZE(0), _SIZE(0)
    _dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def remote_memory() -> list[dict[str, Any]]:
    """Free and total memory of every registered remote device, asked over the child's own
    connection (``ggml_backend_rpc_get_device_memory`` through the device interface): a worker
    serves one client at a time, so while we hold it nobody else can ask."""
    out: list[dict[str, Any]] = []
    for i in range(int(_dev_count())):
        dev = _dev_get(i)
        reg = _dev_reg(dev)
        if not reg or (_reg_name(reg) or b"") != b"RPC":
            continue
        free, total = _memory(dev)
        endpoint = (_dev_description(dev) or b"").decode()  # ggml-rpc describes a device by its endpoint
        index = sum(1 for d in out if d["endpoint"] == endpoint)
        out.append(
            {
                "name": rpc_device_name(endpoint, index),
                "endpoint": endpoint,
                "free_bytes": free,
                "total_bytes": total,
            }
        )
    return out


def local_devices(names: list[str]) -> list[int]:
    """The devices a worker lends, chosen as rpc-server does: the named ones, else every
    accelerator, else the CPU. An unknown name is a ValueError listing the ones there are."""
    LL.llama_backend_init()
    if names:
        devices = []
        for name in names:
            dev = _dev_by_name(name.encode())
            if not dev:
                known = ", ".join((_dev_name(_dev_get(i)) or b"").decode() for i in range(int(_dev_count())))
                raise ValueError(f"no device named {name!r} here (there is {known})")
            devices.append(dev)
        return devices
    all_devs = [_dev_get(i) for i in range(int(_dev_count()))]
    accel = [d for d in all_devs if _dev_type(d) not in (_DEV_CPU, _DEV_ACCEL)]
    return accel or [d for d in all_devs if _dev_type(d) == _DEV_CPU][:1]


def describe(devices: list[int]) -> list[dict[str, Any]]:
    out = []
    for dev in devices:
        free, total = _memory(dev)
        out.append(
            {
                "name": (_dev_name(dev) or b"").decode(),
                "description": (_dev_description(dev) or b"").decode(),
                "free_bytes": free,
                "total_bytes": total,
            }
        )
    return out


def start_server(endpoint: str, cache_dir: str | None, n_threads: int, devices: list[int]) -> None:
    """Serve until the process ends (``ggml_backend_rpc_start_server`` never returns unless the
    port cannot be bound)."""
    start = _rpc_function("ggml_backend_rpc_start_server", _START_SERVER)
    arr = (_P * len(devices))(*devices)
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, n_threads, len(devices), arr)
