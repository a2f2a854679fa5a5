"""The analytic CPU_REPACK prediction against what llama.cpp really allocates (CPU-only load).

    python benchmarks/cpu_repack.py [--out DIR] [--work DIR] [--keep]

Writes a few synthetic llama GGUFs (random bytes; the values do not matter for memory) whose
matrices use the types llama.cpp's CPU backend may repack — Q4_0, Q4_K, Q5_K, Q6_K, Q2_K,
IQ4_NL, Q8_0, MXFP4, Q1_0 — including MoE experts (3-D, MUL_MAT_ID), a tied output
(no output.weight: the duplicate of token_embd may be repacked) and a vocabulary of 8k+4 rows
(ne[1] % 8 != 0). Each is then loaded for real by llama.cpp in a child process (this file with
--child; imports llama_cpp there only), twice: load_mode NONE (weights in `CPU` + `CPU_REPACK`
buffers) and MMAP (`CPU_Mapped` + `CPU_REPACK`). The parent parses the `load_tensors: … model
buffer size` lines with engine.plan.measured and compares, in MiB as printed (2 decimals):

- CPU_REPACK (both modes) with engine.plan.cpu_repack's prediction for the detected CPU features,
- CPU (NONE) with the analytic plan's remaining CPU weights,
- CPU_Mapped (MMAP) with the file span of the tensors not repacked (notes §10).

It also records the features three ways: engine.plan.cpu_features.detect() (what the plan uses),
the processor (/proc/cpuinfo) and the child's llama_print_system_info(). Run it where no GPU
is visible (CUDA_VISIBLE_DEVICES=""): with a GPU the host buffer type wins and nothing is
repacked. Imports only engine/, gguf and numpy in the parent. Prints a table; writes
DIR/cpu-repack-<date>.json. Exit status 0 when every number agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 2**20
# name -> (token_embd type, output type or None for tied, {role: type}, n_vocab, n_expert)
MODELS: dict[str, tuple[str, str | None, dict[str, str], int, int]] = {
    "q4_0": ("Q4_0", "Q6_K", {"*": "Q4_0"}, 8192, 0),
    "q4_k_m": (
        "Q4_K",
        "Q6_K",
        {
            "attn_q": "Q4_K",
            "attn_k": "Q4_K",
            "attn_v": "Q6_K",
            "attn_output": "Q4_K",
            "ffn_gate": "Q4_K",
            "ffn_up": "Q4_K",
            "ffn_down": "Q6_K",
        },
        8192,
        0,
    ),
    "q5_k_q8_0": ("Q8_0", "Q8_0", {"*": "Q5_K", "attn_v": "Q8_0"}, 8196, 0),
    "q2_k": ("Q2_K", "Q2_K", {"*": "Q2_K", "ffn_down": "Q4_K"}, 8192, 0),
    "iq4_nl_tied": ("IQ4_NL", None, {"*": "IQ4_NL"}, 8192, 0),
    "q4_0_tied_8k4": ("Q4_0", None, {"*": "Q4_0"}, 8196, 0),
    "moe_mxfp4": (
        "Q8_0",
        "Q8_0",
        {"*": "Q8_0", "ffn_gate_exps": "MXFP4", "ffn_up_exps": "MXFP4", "ffn_down_exps": "MXFP4"},
        8192,
        4,
    ),
    "moe_q4_k_tied": ("Q4_K", None, {"*": "Q4_K", "ffn_down_exps": "Q6_K"}, 8192, 4),
    "q1_0": ("Q8_0", "Q8_0", {"*": "Q1_0"}, 8192, 0),
}
N_EMBD, N_FF, N_FF_EXP, N_LAYER, N_HEAD, N_HEAD_KV, HEAD = 1024, 2816, 512, 3, 16, 4, 64


def write_model(path: Path, name: str, seed: int = 0) -> dict[str, Any]:
    """A small llama (MoE when n_expert) with random bytes in every quantized tensor."""
    import gguf
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    embd_t, out_t, roles, n_vocab, n_expert = MODELS[name]
    rng = np.random.default_rng(seed)

    def tensor(w: gguf.GGUFWriter, tname: str, qtype: str, ne: tuple[int, ...]) -> None:
        if qtype == "F32":
            w.add_tensor(tname, np.ones(tuple(reversed(ne)), dtype=np.float32))
            return
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
        shape = tuple(reversed(ne[1:])) + (ne[0] // block * size,)
        w.add_tensor(
            tname, rng.integers(0, 256, size=shape, dtype=np.uint8), raw_dtype=GGMLQuantizationType[qtype]
        )

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"cpu-repack {name}")
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF_EXP if n_expert else N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    kv = N_HEAD_KV * HEAD
    tensor(w, "token_embd.weight", embd_t, (N_EMBD, n_vocab))
    for il in range(N_LAYER):
        p = f"blk.{il}."
        tensor(w, p + "attn_norm.weight", "F32", (N_EMBD,))
        mats = [
            ("attn_q", (N_EMBD, N_HEAD * HEAD)),
            ("attn_k", (N_EMBD, kv)),
            ("attn_v", (N_EMBD, kv)),
            ("attn_output", (N_HEAD * HEAD, N_EMBD)),
        ]
        if n_expert:
            tensor(w, p + "ffn_gate_inp.weight", "F32", (N_EMBD, n_expert))
            mats += [
                ("ffn_gate_exps", (N_EMBD, N_FF_EXP, n_expert)),
                ("ffn_up_exps", (N_EMBD, N_FF_EXP, n_expert)),
                ("ffn_down_exps", (N_FF_EXP, N_EMBD, n_expert)),
            ]
        else:
            mats += [("ffn_gate", (N_EMBD, N_FF)), ("ffn_up", (N_EMBD, N_FF)), ("ffn_down", (N_FF, N_EMBD))]
        for role, ne in mats:
            tensor(w, p + role + ".weight", roles.get(role) or roles["*"], ne)
        tensor(w, p + "ffn_norm.weight", "F32", (N_EMBD,))
    tensor(w, "output_norm.weight", "F32", (N_EMBD,))
    if out_t:
        tensor(w, "output.weight", out_t, (N_EMBD, n_vocab))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    types = sorted({embd_t, *roles.values()} | ({out_t} if out_t else set()))
    return {
        "name": name,
        "types": types,
        "tied": out_t is None,
        "n_vocab": n_vocab,
        "n_expert": n_expert,
        "size_bytes": path.stat().st_size,
    }


# --- the child: a real load, log captured ----------------------------------------------------


def _child() -> None:  # pragma: no cover - runs in the child process
    # Nothing may load numpy before llama.cpp here: with numpy's OpenBLAS loaded first, the CUDA
    # build segfaults while loading a model on the H100 host (CUDA hidden); the parent imports
    # numpy only where it writes models. engine.child.native_log imports llama_cpp first thing.
    import llama_cpp.llama_cpp as LL

    from engine.child.native_log import NativeLog

    lines: list[str] = []
    # every line, DEBUG included; kept in a variable: C holds its callback
    _log = NativeLog(lambda _level, line: lines.append(line), keep_debug=("",))
    LL.llama_backend_init()
    print(
        json.dumps(
            {
                "system_info": LL.llama_print_system_info().decode("utf-8", "replace"),
                "gpu_offload": bool(LL.llama_supports_gpu_offload()),
            }
        ),
        flush=True,
    )
    modes = {"none": LL.LLAMA_LOAD_MODE_NONE, "mmap": LL.LLAMA_LOAD_MODE_MMAP}
    for job in json.loads(sys.stdin.read()):
        lines.clear()
        mp = LL.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.load_mode = modes[job["mode"]]
        t0 = time.perf_counter()
        model = LL.llama_model_load_from_file(job["path"].encode(), mp)
        dt = time.perf_counter() - t0
        if model:
            LL.llama_model_free(model)
        print(json.dumps({"ok": bool(model), "load_s": round(dt, 3), "lines": list(lines)}), flush=True)


def real_loads(jobs: list[dict[str, str]], timeout: float) -> tuple[dict[str, Any], list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GGML_NO_BACKTRACE": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child"],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    out = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if not out or len(out) < len(jobs) + 1:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"the loading child stopped early (exit {proc.returncode}):\n{tail}")
    return out[0], out[1:]


# --- the parent: predictions and comparison --------------------------------------------------


def model_buffers(lines: list[str]) -> dict[str, float]:
    from engine.plan.measured import MemoryLogParser

    parser = MemoryLogParser()
    for line in lines:
        parser.feed(line)
    return {buft: mib for (comp, buft), mib in parser.buffers.items() if comp == "weights"}


def mapped_span(path: Path, features: Any) -> int:
    """CPU_Mapped size: file span [min offset, max end) of the tensors left in the CPU buffer
    (get_mapping_range); repacked tensors are copied out instead."""
    import gguf

    from engine.plan.cpu_repack import tensor_layout

    first, last = None, 0
    for t in gguf.GGUFReader(str(path)).tensors:
        ne = tuple(int(x) for x in t.shape)
        if features is not None and tensor_layout(t.name, t.tensor_type.name, ne, features):
            continue
        start = int(t.data_offset)
        first = start if first is None else min(first, start)
        last = max(last, start + int(t.n_bytes))
    return last - (first or 0)


def mib(x: float | int | None) -> str:
    return "-" if x is None else f"{x / MiB:.2f}" if isinstance(x, int) else f"{x:.2f}"


def main() -> int:
    if "--child" in sys.argv:
        _child()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default="", help="where to write the GGUFs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the GGUFs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    from engine.core.build import runtime_lib_dir
    from engine.core.memory_types import PlanSettings
    from engine.gguf.inspect import inspect_gguf
    from engine.plan.analytic import analytic_plan
    from engine.plan.cpu_features import detect, host_features, parse_system_info
    from engine.plan.cpu_repack import cpu_only_repack

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cpu-repack-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = {n: write_model(work / f"{n}.gguf", n, seed=i) for i, n in enumerate(args.models.split(","))}
    print(f"wrote {len(written)} models in {time.perf_counter() - t0:.1f} s to {work}", flush=True)

    jobs = [{"path": str(work / f"{n}.gguf"), "mode": m} for n in written for m in ("none", "mmap")]
    hello, loads = real_loads(jobs, args.timeout)
    feats, host = detect(), host_features()
    built = parse_system_info(hello["system_info"])
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "python": platform.python_version(),
        "llama_cpp_lib": str(runtime_lib_dir()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "features": {
            "detected": _feat(feats),
            "processor": _feat(host),
            "system_info": _feat(built),
            "system_info_text": hello["system_info"],
        },
        "detected_matches_build": (feats is not None and built is not None and feats.flags == built.flags),
        "models": [],
    }
    header = (
        f"{'model':<15} {'types':<22} {'REPACK plan':>11} {'none':>8} {'mmap':>8} "
        f"{'CPU plan':>9} {'CPU log':>8} {'span':>8} {'Mapped':>8}  ok"
    )
    print(f"features: detected {_feat(feats)}; build says {_feat(built)}; processor {_feat(host)}")
    print(header + "\n" + "-" * len(header))
    all_ok = True
    for i, (name, meta) in enumerate(written.items()):
        path = work / f"{name}.gguf"
        none, mmap_ = loads[2 * i], loads[2 * i + 1]
        b_none, b_mmap = model_buffers(none["lines"]), model_buffers(mmap_["lines"])
        info = inspect_gguf(path)
        plan = analytic_plan(info, PlanSettings(), [])
        repack, note = cpu_only_repack(info)
        p_rep = repack.bytes if repack else 0
        p_cpu = plan.bytes_for("CPU", "weights") - p_rep
        span = mapped_span(path, feats)
        checks = {
            "loaded": none["ok"] and mmap_["ok"],
            "no_gpu_buffers": not any(not b.startswith("CPU") for b in {**b_none, **b_mmap}),
            "repack_none": mib(p_rep) == mib(b_none.get("CPU_REPACK", 0.0)),
            "repack_mmap": mib(p_rep) == mib(b_mmap.get("CPU_REPACK", 0.0)),
            "cpu_none": mib(p_cpu) == mib(b_none.get("CPU", 0.0)),
            "mapped_mmap": mib(span) == mib(b_mmap.get("CPU_Mapped", 0.0)),
        }
        ok = all(checks.values())
        all_ok &= ok
        res["models"].append(
            {
                **meta,
                "plan_repack_bytes": p_rep,
                "plan_cpu_bytes": p_cpu,
                "mapped_span_bytes": span,
                "repack_by_type": [list(x) for x in repack.by_type] if repack else [],
                "plan_note": note,
                "log_none_mib": b_none,
                "log_mmap_mib": b_mmap,
                "load_s": {"none": none.get("load_s"), "mmap": mmap_.get("load_s")},
                "checks": checks,
                "ok": ok,
            }
        )
        print(
            f"{name:<15} {'/'.join(meta['types']):<22} {mib(p_rep):>11} "
            f"{mib(b_none.get('CPU_REPACK')):>8} {mib(b_mmap.get('CPU_REPACK')):>8} "
            f"{mib(p_cpu):>9} {mib(b_none.get('CPU')):>8} {mib(span):>8} "
            f"{mib(b_mmap.get('CPU_Mapped')):>8}  {'yes' if ok else 'NO ' + str([k for k, v in checks.items() if not v])}"
        )
    res["all_ok"] = all_ok
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"cpu-repack-{res['date']}.json"
    target.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'all agree' if all_ok else 'MISMATCH'}; wrote {target}")
    if not args.keep and not args.work:
        for p in work.glob("*.gguf"):
            p.unlink()
        work.rmdir()
    return 0 if all_ok else 1


def _feat(f: Any) -> str | None:
    return (
        None
        if f is None
        else f"{f.label()}" + (f" (SVE {f.sve_bytes} B)" if f.sve_bytes else "") + f" [{f.source}]"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
