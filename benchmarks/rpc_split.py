"""llama.cpp RPC workers: what splitting a model across workers costs, and the plan and fit per
worker (issue 22), in one run.

    python benchmarks/rpc_split.py cpu MODEL.gguf [--out DIR]   # this machine: 2 loopback workers
    python benchmarks/rpc_split.py gpu [--out DIR]              # GPU machine: 1 worker owns the GPU

``cpu``: two `kvdeck worker` processes on 127.0.0.1 lend this machine's CPU; prefill and decode
t/s of the model loaded locally and split across the host and both workers; per worker, the plan
(analytic, and llama.cpp's dry run for compute) against what the load log says was allocated; a
fit with small worker budgets. ``gpu``: a llama-3-8B-shaped Q4_0 GGUF (benchmarks/synthetic_gguf.py),
one worker owning CUDA0 and the runtime child on the CPU side (CUDA hidden from it): t/s against
the same model loaded locally on the GPU, plan against measured on the worker, and fit against
llama.cpp's own ``llama-fit-params --rpc`` with the same margin on the worker.
Writes ``rpc-<date>.json`` (rewritten after every stage, so a run cut short still reports).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.memory_types import COMPONENTS, Device, MiB, PlanSettings  # noqa: E402
from engine.gguf.inspect import inspect_gguf  # noqa: E402
from engine.plan.analytic import analytic_plan  # noqa: E402
from engine.plan.fit import fit, pin_split  # noqa: E402
from engine.plan.margins import Margins  # noqa: E402
from engine.protocol import LoadParams  # noqa: E402
from engine.runtime.exact_plan import plan_from_log  # noqa: E402
from engine.runtime.host import RuntimeHost  # noqa: E402
from engine.runtime.worker_process import WorkerProcess  # noqa: E402
from engine.runtime.workers import remote_devices  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench(
    path: str,
    settings: PlanSettings,
    rpc: tuple[str, ...],
    pp: int,
    tg: int,
    reps: int,
    env: dict[str, str] | None,
    threads: int = 0,
) -> dict[str, Any]:
    """Load, bench (engine.child.bench, llama-bench's method), return t/s and the load log."""
    with RuntimeHost(rpc=rpc, env=env) as host:
        loaded = host.load(LoadParams(path, settings, n_threads=threads))
        res = host.bench(pp, tg, 0, reps)
    return {
        "pp_tokens_per_s": round(statistics.mean(res.pp_tokens_per_s), 2),
        "tg_tokens_per_s": round(statistics.mean(res.tg_tokens_per_s), 2),
        "pp_samples": [round(x, 2) for x in res.pp_tokens_per_s],
        "tg_samples": [round(x, 2) for x in res.tg_tokens_per_s],
        "load_s": round(loaded.load_s, 2),
        "memory_log": loaded.memory_log,
    }


def plan_vs_measured(
    path: str, settings: PlanSettings, devices: list[Device], log: list[str], dry_log: list[str] | None
) -> dict[str, Any]:
    predicted = analytic_plan(inspect_gguf(path), settings, devices)
    measured = plan_from_log(log, settings, "measured")
    dry = plan_from_log(dry_log, settings, "exact") if dry_log else None
    out: dict[str, Any] = {}
    for dev in measured.devices():
        row: dict[str, Any] = {}
        for c in COMPONENTS:
            p, m = predicted.bytes_for(dev, c), measured.bytes_for(dev, c)
            if p or m:
                row[c] = {"predicted_mib": round(p / MiB, 2), "measured_mib": round(m / MiB, 2)}
                row[c]["error_mib"] = round((p - m) / MiB, 2)
        if dry is not None:
            row["compute"]["dry_run_mib"] = round(dry.bytes_for(dev, "compute") / MiB, 2)
        out[dev] = row
    return out


def _save(out: Path, data: dict[str, Any]) -> None:
    out.write_text(json.dumps(data, indent=2) + "\n")


def run_cpu(model: str, out: Path, data: dict[str, Any]) -> None:
    from engine.runtime.info import plan_devices

    base = PlanSettings(n_ctx=2048, type_k="f16", type_v="f16")
    workers = [WorkerProcess("127.0.0.1", _free_port(), threads=1) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        rpc = tuple(w.endpoint for w in workers)
        devices = plan_devices(rpc=rpc)[0]
        split = pin_split(base, devices)
        # one thread per process: the workers have one each, and 2 shared cores make more threads
        # than cores spin against each other (OpenMP) rather than compute
        local = bench(model, base, (), 128, 32, 5, None, threads=1)
        remote = bench(model, split, rpc, 128, 32, 5, None, threads=1)
        data["cpu"] = {
            "load_average_1min": os.getloadavg()[0],
            "threads_per_process": 1,
            "model": Path(model).name,
            "workers": list(rpc),
            "tensor_split": list(split.tensor_split),
            **versus(local, "local", remote, "split_2_workers"),
        }
        with RuntimeHost(rpc=rpc) as host:
            dry = host.load(LoadParams(model, split, dry_run=True)).memory_log
        data["cpu"]["plan_vs_measured"] = plan_vs_measured(model, split, devices, remote["memory_log"], dry)
        _save(out, data)
        small = {d.name: max(0, d.free_bytes - 150 * MiB) for d in devices if d.endpoint}
        result = fit(
            inspect_gguf(model),
            PlanSettings(n_ctx=0),
            devices,
            plan_fn=analytic_plan,
            margins=Margins(gpu=0, per_device=small),
        )
        data["cpu"]["fit_150_mib_per_worker"] = {
            "n_ctx": result.plan.n_ctx,
            "n_gpu_layers": result.settings.n_gpu_layers,
            "reason": result.reason,
            "per_device_mib": {d: round(result.plan.bytes_for(d) / MiB, 1) for d in result.plan.devices()},
        }
        _save(out, data)
    finally:
        for w in workers:
            w.stop()


def _llama_fit_params(model: str, endpoint: str, margin_mib: int) -> dict[str, Any]:
    """llama.cpp's own fit with the worker as its only GPU (-fitt: MiB kept free per device). No
    ``-c``: an explicit ``-c 0`` would stop it from reducing the context (common/fit.cpp changes
    n_ctx only while it is at its default), which KV Deck's fit does."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = ["llama-fit-params", "-m", model, "--rpc", endpoint, "-fitt", str(margin_mib)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    words = p.stdout.split()
    got = {words[i]: words[i + 1] for i in range(0, len(words) - 1) if words[i].startswith("-")}
    return {
        "command": " ".join(cmd),
        "stdout": p.stdout.strip(),
        "rc": p.returncode,
        "stderr_tail": p.stderr[-600:],
        **got,
    }


def run_gpu(out: Path, data: dict[str, Any]) -> None:
    from benchmarks.synthetic_gguf import write_gguf
    from engine.runtime.info import plan_devices

    model = "/tmp/rpc-llama3-8b-q4_0.gguf"
    if not Path(model).exists():
        write_gguf(Path(model), "llama3-8b")
    base = PlanSettings(n_ctx=8192, type_k="f16", type_v="f16", flash_attn="on")
    local = bench(model, base, (), 512, 64, 2, None)  # the GPU to the local run alone first
    worker = WorkerProcess("127.0.0.1", _free_port(), devices=["CUDA0"])
    worker.start()
    cpu_side = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the runtime child sees no local GPU
    try:
        rpc = (worker.endpoint,)
        host_ram = [d for d in plan_devices()[0] if d.kind == "cpu"]
        devices = host_ram + remote_devices(rpc)
        data["gpu"] = {"worker": worker.endpoint, "worker_devices": [vars(d) for d in worker.devices]}
        remote = bench(model, base, rpc, 512, 64, 2, cpu_side)
        data["gpu"].update(
            {
                **versus(local, "local_gpu", remote, "cpu_side_plus_gpu_worker"),
                "plan_vs_measured": plan_vs_measured(model, base, devices, remote["memory_log"], None),
            }
        )
        _save(out, data)
        gpu = next(d for d in devices if d.endpoint)
        data["gpu"]["fit"] = []
        for left in (5500, 4800, 4500, 3000):  # MiB left on the worker for a 4.2 GiB model
            margin = max(0, gpu.free_bytes // MiB - left)
            ours = fit(
                inspect_gguf(model),
                PlanSettings(n_ctx=0, type_k="f16", type_v="f16"),
                devices,
                plan_fn=analytic_plan,
                margins=Margins(per_device={gpu.name: margin * MiB}),
            )
            row: dict[str, Any] = {
                "worker_mib_left": left,
                "worker_margin_mib": margin,
                "kvdeck": {
                    "n_ctx": ours.plan.n_ctx,
                    "n_gpu_layers": ours.settings.n_gpu_layers,
                    "reason": ours.reason,
                    "worker_mib": round(ours.plan.bytes_for(gpu.name) / MiB, 1),
                },
            }
            worker.stop()  # one client at a time: llama-fit-params gets a fresh worker
            worker = WorkerProcess("127.0.0.1", _free_port(), devices=["CUDA0"])
            worker.start()
            row["llama_fit_params"] = _llama_fit_params(model, worker.endpoint, margin)
            data["gpu"]["fit"].append(row)
            _save(out, data)
    finally:
        worker.stop()


def versus(
    local: dict[str, Any], local_name: str, remote: dict[str, Any], remote_name: str
) -> dict[str, Any]:
    """Both benches (without their memory logs) and remote's speed as a fraction of local's."""
    return {
        local_name: {k: v for k, v in local.items() if k != "memory_log"},
        remote_name: {k: v for k, v in remote.items() if k != "memory_log"},
        "decode_ratio": round(remote["tg_tokens_per_s"] / local["tg_tokens_per_s"], 3),
        "prefill_ratio": round(remote["pp_tokens_per_s"] / local["pp_tokens_per_s"], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("cpu", "gpu"))
    p.add_argument("model", nargs="?")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    out = Path(args.out) / f"rpc-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = (
        json.loads(out.read_text()) if out.exists() else {}
    )  # the other mode's results stay
    data[f"{args.mode}_machine"] = {"name": os.uname().nodename, "cpus": os.cpu_count()}
    if args.mode == "cpu":
        run_cpu(args.model, out, data)
    else:
        run_gpu(out, data)
    _save(out, data)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
