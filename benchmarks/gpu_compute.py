"""CUDA compute buffers of real model shapes, from llama.cpp's own no-alloc dry run (issue 18).

    python benchmarks/gpu_compute.py --out DIR [--grid main|check] [--shapes a,b] [--real]
                                     [--debug] [--budget-s 400]

Writes each shape as a *sparse* GGUF: metadata and tensor infos of the real model (real vocab
size, all matrices Q4_0) followed by a hole up to the full data size, so a 70B file costs no
disk. A dry run (`no_alloc`, `load_mode NONE`) never reads tensor data, and a real load reads
zeros, which is all a memory measurement needs. For every case of the grid a child process
(`tools.llama_dry_run`, the dry run the tests use too) creates the context and we keep llama.cpp's `sched_reserve: <buft> compute buffer size` lines
(and the KV/output lines): `raw-<grid>.json` in DIR. The analytic side is computed later, on
any machine, by benchmarks/gpu_compute_report.py (it rewrites the same sparse files locally).
`--debug` also keeps `GGML_SCHED_DEBUG=2` graph dumps (node, size, backend, split inputs) of a
few cases, gzipped, to read where the peak of each backend is.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.memory_types import PlanSettings  # noqa: E402
from tools.llama_dry_run import run_jobs as dry_run_jobs  # noqa: E402


def _shape(
    arch: str, n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int, **more: Any
) -> dict[str, Any]:
    return dict(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=more.pop("head_dim", 128),
        n_ff=n_ff,
        **more,
    )


# Real model dimensions (Hugging Face configs); matrices Q4_0, norms f32.
# arch, n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff (head_dim 128 unless given)
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": _shape("llama", 128256, 4096, 32, 32, 8, 14336),
    "qwen3-32b": _shape("qwen3", 151936, 5120, 64, 64, 8, 25600),
    "llama3-70b": _shape("llama", 128256, 8192, 80, 64, 8, 28672),
    "qwen3moe-30b-a3b": _shape(
        "qwen3moe", 151936, 2048, 48, 32, 4, 6144, n_expert=128, n_expert_used=8, n_ff_exp=768
    ),
    "gemma3-27b": _shape("gemma3", 262208, 5376, 62, 32, 16, 21504, n_swa=1024, tied=True),
    "tiny": _shape("llama", 32000, 256, 4, 4, 2, 768, head_dim=64),
    # Llama 3.1+ files carry rope_freqs.weight (the llama3 rope scaling factors): every layer's
    # rope reads it, so a CPU layer's rope has a host weight too
    "llama31-8b": _shape("llama", 128256, 4096, 32, 32, 8, 14336, rope_freqs=True),
}
Q4_0, F32 = 2, 0


def tensors(h: dict[str, Any]) -> list[tuple[str, tuple[int, ...], int]]:
    """[(name, ggml ne, type)] for a shape: what the arch's load_arch_tensors asks for."""
    e, q, kv = h["n_embd"], h["n_head"] * h["head_dim"], h["n_head_kv"] * h["head_dim"]
    arch = h["arch"]
    out = [("token_embd.weight", (e, h["n_vocab"]), Q4_0), ("output_norm.weight", (e,), F32)]
    if not h.get("tied"):
        out.append(("output.weight", (e, h["n_vocab"]), Q4_0))
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h["head_dim"] // 2,), F32))
    for il in range(h["n_layer"]):
        lay = [
            ("attn_norm.weight", (e,), F32),
            ("attn_q.weight", (e, q), Q4_0),
            ("attn_k.weight", (e, kv), Q4_0),
            ("attn_v.weight", (e, kv), Q4_0),
            ("attn_output.weight", (q, e), Q4_0),
            ("ffn_norm.weight", (e,), F32),
        ]
        if arch in ("qwen3", "qwen3moe", "gemma3"):
            lay += [
                ("attn_q_norm.weight", (h["head_dim"],), F32),
                ("attn_k_norm.weight", (h["head_dim"],), F32),
            ]
        if arch == "gemma3":
            lay += [("post_attention_norm.weight", (e,), F32), ("post_ffw_norm.weight", (e,), F32)]
        if h.get("n_expert"):
            ne, fe = h["n_expert"], h["n_ff_exp"]
            lay += [
                ("ffn_gate_inp.weight", (e, ne), F32),
                ("ffn_gate_exps.weight", (e, fe, ne), Q4_0),
                ("ffn_up_exps.weight", (e, fe, ne), Q4_0),
                ("ffn_down_exps.weight", (fe, e, ne), Q4_0),
            ]
        else:
            lay += [
                ("ffn_gate.weight", (e, h["n_ff"]), Q4_0),
                ("ffn_up.weight", (e, h["n_ff"]), Q4_0),
                ("ffn_down.weight", (h["n_ff"], e), Q4_0),
            ]
        out += [(f"blk.{il}.{n}", ne, t) for n, ne, t in lay]
    return out


def _nbytes(ne: tuple[int, ...], t: int) -> int:
    n = 1
    for x in ne:
        n *= x
    return n * 4 if t == F32 else n // 32 * 18


def write_sparse_gguf(path: Path, name: str, n_ctx_train: int = 131072) -> dict[str, Any]:
    """The shape's GGUF: header, metadata and tensor infos, then a hole to the full size."""
    import gguf
    import numpy as np

    h = SHAPES[name]
    arch = h["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.name", f"synthetic {name} (sparse, no data)")
    w.add_uint32("general.file_type", 2)  # MOSTLY_Q4_0
    kv: dict[str, Any] = {
        "context_length": n_ctx_train,
        "embedding_length": h["n_embd"],
        "block_count": h["n_layer"],
        "feed_forward_length": h["n_ff"],
        "attention.head_count": h["n_head"],
        "attention.head_count_kv": h["n_head_kv"],
        "attention.key_length": h["head_dim"],
        "attention.value_length": h["head_dim"],
        "rope.dimension_count": h["head_dim"],
        "rope.freq_base": 1000000.0,
        "attention.layer_norm_rms_epsilon": 1e-6,
    }
    if h.get("n_expert"):
        kv.update(
            {
                "expert_count": h["n_expert"],
                "expert_used_count": h["n_expert_used"],
                "expert_feed_forward_length": h["n_ff_exp"],
            }
        )
    if h.get("n_swa"):
        kv.update({"attention.sliding_window": h["n_swa"], "rope.freq_base_swa": 10000.0})
    for k, v in kv.items():
        (w.add_float32 if isinstance(v, float) else w.add_uint32)(f"{arch}.{k}", v)
    v = h["n_vocab"]
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"\u2581t{i}" for i in range(v - len(toks))]
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", toks)
    w.add_array("tokenizer.ggml.scores", [0.0] * v)
    w.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * (v - 259))
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    total = 0
    for tname, ne, t in tensors(h):
        nb = _nbytes(ne, t)
        w.add_tensor_info(
            tname, tuple(reversed(ne)), np.dtype(np.float32), nb, raw_dtype=gguf.GGMLQuantizationType(t)
        )
        total += -(-nb // 32) * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = -(-path.stat().st_size // 32) * 32
    os.truncate(path, start + total)
    return {"shape": name, **h, "file_bytes": start + total, "data_offset": start}


# --- the dry runs: tools.llama_dry_run's child, one model load per (path, ngl) ----------------

#: DEBUG lines kept besides INFO and above: compute sizes and, with GGML_SCHED_DEBUG=2, the splits.
KEEP_DEBUG = ("compute buffer size is", "worst-case", "## SPLIT", "node #")


def settings_of(s: dict[str, Any]) -> PlanSettings:
    """A grid case (ngl, n_ctx, tk, tv, fa; n_ubatch, n_seq, swa_full, n_cpu_moe if set) as plan
    settings; real loads copy the weights in (load mode none), as the dry runs do."""
    return PlanSettings(
        n_ctx=s["n_ctx"],
        type_k=s["tk"],
        type_v=s["tv"],
        flash_attn=s["fa"],
        n_gpu_layers=s["ngl"],
        n_ubatch=s.get("n_ubatch", 512),
        n_seq_max=s.get("n_seq", 1),
        swa_full=s.get("swa_full", False),
        n_cpu_moe=s.get("n_cpu_moe", 0),
        load_mode="none",
    )


def run_jobs(
    jobs: list[dict[str, Any]], env: dict[str, str] | None = None, timeout: float = 900
) -> list[dict[str, Any]]:
    """Jobs ``{"path", "s": grid case, "real"?}`` in as few children as possible; each result has
    the context's log lines only, and a job that kills the child is reported with ``died``."""
    out = dry_run_jobs(
        [
            {"path": j["path"], "settings": settings_of(j["s"]).to_dict(), "real": j.get("real", False)}
            for j in jobs
        ],
        KEEP_DEBUG,
        threads=4,
        env=env,
        timeout=timeout,
    )
    return [{**r, "died": r["died"][-800:]} if "died" in r else r for r in out]


def parse(lines: list[str]) -> dict[str, Any]:
    """compute buffer sizes (MiB) per buffer type, exact to 1e-4 when the DEBUG line exists."""
    import re

    r: dict[str, Any] = {"compute": {}, "kv": {}, "output": {}, "other": []}
    for ln in lines:
        m = re.search(r"(\S+) (compute|KV|output) buffer size = +([0-9.]+) MiB", ln)
        if m:
            comp = {"compute": "compute", "KV": "kv", "output": "output"}[m.group(2)]
            r[comp][m.group(1)] = float(m.group(3))
            continue
        m = re.search(r"(\S+) compute buffer size is +([0-9.]+) MiB", ln)
        if m:
            r["compute"][m.group(1)] = float(m.group(2))
        elif (
            "flash_attn" in ln
            or "graph nodes" in ln
            or "graph:" in ln
            or "worst-case" in ln
            or "Flash Attention" in ln
            or "failed" in ln
            or "error" in ln.lower()
        ):
            r["other"].append(ln.strip()[:200])
    return r


def grid(name: str, which: str) -> list[dict[str, Any]]:
    h = SHAPES[name]
    n = h["n_layer"]
    if which == "main":
        ngls = [-1, n, 3 * n // 4, n // 2, n // 4, 0]
        ctxs = [4096, 32768, 131072]
        kvs = [("f16", "f16", "on"), ("f16", "f16", "off"), ("q8_0", "q8_0", "on"), ("q4_0", "q4_0", "on")]
        cases = [dict(ngl=g, n_ctx=c, tk=k, tv=v, fa=f) for g in ngls for c in ctxs for k, v, f in kvs]
        # ubatch, parallel sequences, mixed K/V types, explicit FA auto
        cases += [
            dict(ngl=-1, n_ctx=16384, tk="f16", tv="f16", fa="on", n_ubatch=2048),
            dict(ngl=-1, n_ctx=16384, tk="q8_0", tv="q8_0", fa="on", n_ubatch=1024),
            dict(ngl=-1, n_ctx=16384, tk="f16", tv="f16", fa="off", n_ubatch=1024),
            dict(ngl=n // 2, n_ctx=16384, tk="f16", tv="f16", fa="on", n_ubatch=2048),
            dict(ngl=-1, n_ctx=32768, tk="f16", tv="f16", fa="on", n_seq=4),
            dict(ngl=-1, n_ctx=32768, tk="q8_0", tv="q8_0", fa="on", n_seq=4),
            dict(ngl=-1, n_ctx=16384, tk="q8_0", tv="f16", fa="off"),
            dict(ngl=-1, n_ctx=16384, tk="q4_0", tv="f16", fa="on"),
            dict(ngl=-1, n_ctx=8192, tk="f16", tv="f16", fa="auto"),
        ]
        return cases
    if which == "confirm":  # partial offload at layer counts, contexts and ubatches never measured
        return [
            dict(ngl=g, n_ctx=c, tk=k, tv=k, fa=f, n_ubatch=u)
            for g in (n - 2, 2 * n // 3, n // 5, 2)
            for c, u in ((8192, 512), (49152, 512), (24576, 1024))
            for k, f in (("f16", "on"), ("q8_0", "on"), ("f16", "off"))
        ]
    if which == "next":  # held out 2026-12-05 (only the GPU-free oracle checked): experts on the
        experts = ((-1, n // 4), (-1, n), (2 * n // 3, n // 3)) if "n_expert" in h else ()  # CPU,
        cases = [  # and partial offload at new settings (llama31-8b: rope_freqs)
            dict(ngl=g, n_ctx=c, tk=k, tv=k, fa="on", n_cpu_moe=m)
            for g, m in experts
            for c, k in ((16384, "f16"), (40960, "q8_0"))
        ]
        return cases + [
            dict(ngl=g, n_ctx=c, tk=k, tv=k, fa=f, n_ubatch=u)
            for g in (n - 3, n // 2 + 1, 3)
            for c, u in ((20480, 512), (36864, 256))
            for k, f in (("f16", "on"), ("q4_0", "on"), ("f16", "off"))
        ]
    # "check": settings the fit never saw
    ngls = [-1, n - 1, n // 3, 1]
    return [
        dict(ngl=g, n_ctx=c, tk=k, tv=k, fa=f)
        for g in ngls
        for c in (12288, 65536)
        for k, f in (("f16", "on"), ("q8_0", "on"), ("q4_0", "on"), ("f16", "off"))
    ]


DEBUG_CASES = [
    ("llama3-70b", dict(ngl=20, n_ctx=16384, tk="f16", tv="f16", fa="on")),
    ("llama3-70b", dict(ngl=-1, n_ctx=65536, tk="q4_0", tv="q4_0", fa="on")),
    ("llama3-8b", dict(ngl=-1, n_ctx=8192, tk="f16", tv="f16", fa="off")),
    ("qwen3moe-30b-a3b", dict(ngl=-1, n_ctx=32768, tk="f16", tv="f16", fa="on")),
    ("qwen3moe-30b-a3b", dict(ngl=12, n_ctx=32768, tk="f16", tv="f16", fa="on")),
    ("gemma3-27b", dict(ngl=-1, n_ctx=32768, tk="q8_0", tv="q8_0", fa="on")),
    ("qwen3-32b", dict(ngl=32, n_ctx=4096, tk="f16", tv="f16", fa="off")),
]
REAL_CASES = [
    ("llama3-8b", dict(ngl=-1, n_ctx=32768, tk="q8_0", tv="q8_0", fa="on")),
    ("llama3-8b", dict(ngl=16, n_ctx=16384, tk="f16", tv="f16", fa="on")),
    ("qwen3moe-30b-a3b", dict(ngl=-1, n_ctx=16384, tk="q4_0", tv="q4_0", fa="on")),
    ("llama3-70b", dict(ngl=20, n_ctx=16384, tk="f16", tv="f16", fa="on")),
    ("llama31-8b", dict(ngl=20, n_ctx=16384, tk="f16", tv="f16", fa="on")),  # rope_freqs, CPU layers
    ("qwen3moe-30b-a3b", dict(ngl=-1, n_ctx=16384, tk="f16", tv="f16", fa="on", n_cpu_moe=24)),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", default="main")
    ap.add_argument("--shapes", default="llama3-8b,qwen3-32b,llama3-70b,qwen3moe-30b-a3b,gemma3-27b")
    ap.add_argument("--model-dir", default="/tmp/kvdeck-shapes")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420)
    a = ap.parse_args()
    t0 = time.time()
    out, mdir = Path(a.out), Path(a.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    names = a.shapes.split(",")
    meta = {n: write_sparse_gguf(mdir / f"{n}.gguf", n) for n in names}
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "shapes": meta,
        "cases": [],
        "real": [],
        "write_s": round(time.time() - t0, 1),
    }
    path = out / f"raw-{a.grid}.json"
    for n in names:
        cases = grid(n, a.grid)
        jobs = [{"path": str(mdir / f"{n}.gguf"), "s": c} for c in cases]
        t = time.time()
        for c, r in zip(cases, run_jobs(jobs)):
            res["cases"].append(
                {
                    "shape": n,
                    "settings": c,
                    "ok": r["ok"],
                    "wall_s": r.get("s"),
                    **parse(r["lines"]),
                    "died": r.get("died"),
                }
            )
        print(f"{n}: {len(cases)} cases in {time.time() - t:.1f} s", flush=True)
        path.write_text(json.dumps(res, indent=0))
    if a.debug:
        for i, (n, c) in enumerate(DEBUG_CASES):
            if n not in names or time.time() - t0 > a.budget_s * 0.7:
                continue
            r = run_jobs([{"path": str(mdir / f"{n}.gguf"), "s": c}], env={"GGML_SCHED_DEBUG": "2"})
            with gzip.open(out / f"debug{i}.txt.gz", "wt") as f:
                f.write(json.dumps({"shape": n, "settings": c}) + "\n")
                f.write("\n".join(r[0]["lines"]))
    if a.real:
        for n, c in REAL_CASES:
            if n not in names or time.time() - t0 > a.budget_s * 0.8:
                continue
            t = time.time()
            r = run_jobs([{"path": str(mdir / f"{n}.gguf"), "s": c, "real": True}])[0]
            res["real"].append(
                {
                    "shape": n,
                    "settings": c,
                    "ok": r["ok"],
                    "load_s": time.time() - t,
                    **parse(r["lines"]),
                    "died": r.get("died"),
                }
            )
            print(f"real {n} {c}: {time.time() - t:.1f} s", flush=True)
            path.write_text(json.dumps(res, indent=0))
    res["total_s"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(res, indent=0))
    print(
        json.dumps(
            {
                "cases": len(res["cases"]),
                "bad": sum(not c["ok"] for c in res["cases"]),
                "total_s": res["total_s"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
