"""GPU costs of MTP self-drafting on an 8B-class synthetic target with one MTP head.

Writes a llama3-8B-shaped ``hy_v3`` (32 layers, 4096 wide, 14336 FFN, GQA 32/8, 128k vocab, Q8_0)
plus one nextn head, with random weights (each distinct tensor shape is quantised once from a
small random block and tiled: only the costs matter here). Then, in process, through the child's
own classes (engine.child.session / selfdraft / speculative):

* the cost of one MTP draft step, of a k-token verify batch and of the MTP catch-up after it,
  each relative to one plain single-token decode;
* end-to-end tokens/s with drafting and without (random weights: acceptance near 0, so this is
  the overhead, not the gain);
* the speed-up those costs give at acceptance 0.5 / 0.7 / 0.9 (per drafted position, i.i.d.):
  E[tokens per step] = (1 - a^(k+1)) / (1 - a) over cost k*draft + verify(k) + catch-up(k).

Usage: python mtp_gpu.py OUTDIR [MODELDIR]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import gguf
import numpy as np

E, H, HKV, D, FF, N_TRUNK, N_WORDS = 4096, 32, 8, 128, 14336, 32, 128000
if os.environ.get("MTP_SMALL"):  # a CPU smoke run of the script itself
    E, H, HKV, D, FF, N_TRUNK, N_WORDS = 256, 4, 2, 64, 512, 2, int(os.environ.get("MTP_WORDS", "6000"))


def write_target(path: str) -> None:
    rng = np.random.default_rng(0)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def q8(ne0: int, ne1: int) -> np.ndarray:
        if (ne0, ne1) not in cache:
            block = (rng.standard_normal((64, ne0)) * 0.02).astype(np.float32)
            qb = gguf.quants.quantize(block, gguf.GGMLQuantizationType.Q8_0)
            reps = -(-ne1 // 64)
            cache[(ne0, ne1)] = np.ascontiguousarray(np.tile(qb, (reps, 1))[:ne1])
        return cache[(ne0, ne1)]

    w = gguf.GGUFWriter(path, "hy_v3")
    a = "hy_v3"
    w.add_string("general.name", "synthetic-8b-mtp1")
    for k, v in (
        ("context_length", 8192),
        ("embedding_length", E),
        ("block_count", N_TRUNK + 1),
        ("feed_forward_length", FF),
        ("attention.head_count", H),
        ("attention.head_count_kv", HKV),
        ("attention.key_length", D),
        ("attention.value_length", D),
        ("rope.dimension_count", D),
        ("expert_feed_forward_length", 0),
        ("nextn_predict_layers", 1),
    ):
        w.add_uint32(f"{a}.{k}", v)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 500000.0)
    tokens = (
        ["<unk>", "<s>", "</s>"]
        + [f"<0x{b:02X}>" for b in range(256)]
        + [f"\u2581w{i}" for i in range(N_WORDS)]
    )
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", [0.0] * len(tokens))
    w.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * N_WORDS)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    V = len(tokens)
    ones = np.ones(E, np.float32)
    ones_d = np.ones(D, np.float32)

    def mat(name: str, ne0: int, ne1: int) -> None:
        w.add_tensor(name, q8(ne0, ne1), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    mat("token_embd.weight", E, V)
    w.add_tensor("output_norm.weight", ones)
    mat("output.weight", E, V)
    for i in range(N_TRUNK + 1):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        mat(f"blk.{i}.attn_q.weight", E, D * H)
        mat(f"blk.{i}.attn_k.weight", E, D * HKV)
        mat(f"blk.{i}.attn_v.weight", E, D * HKV)
        mat(f"blk.{i}.attn_output.weight", D * H, E)
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones_d)
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", ones_d)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        mat(f"blk.{i}.ffn_gate.weight", E, FF)
        mat(f"blk.{i}.ffn_up.weight", E, FF)
        mat(f"blk.{i}.ffn_down.weight", FF, E)
        if i >= N_TRUNK:
            mat(f"blk.{i}.nextn.eh_proj.weight", 2 * E, E)
            for n in ("enorm", "hnorm", "shared_head_norm"):
                w.add_tensor(f"blk.{i}.nextn.{n}.weight", ones)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def speedup(a: float, k: int, c: dict[str, float]) -> float:
    """Plain-decode time of the expected accepted tokens over one drafted step's time."""
    expected = (1 - a ** (k + 1)) / (1 - a)
    step = k * c["draft_step"] + c[f"verify_{k}"] + c[f"catchup_{k}"]
    return expected * c["plain"] / step


def main() -> None:
    out, mdir = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "/tmp/mtp8b")
    os.makedirs(mdir, exist_ok=True)
    path = os.path.join(mdir, "synthetic-8b-mtp1.gguf")
    t0 = time.time()
    if not (os.path.exists(path) and os.path.getsize(path) > 1 << 30):
        write_target(path)
    result: dict = {
        "model": "hy_v3 llama3-8B-shaped Q8_0 + 1 MTP head, random weights",
        "file_bytes": os.path.getsize(path),
        "write_s": round(time.time() - t0, 1),
    }
    print("written", result, flush=True)

    import llama_cpp.llama_cpp as LL

    from engine.child.decode import generate
    from engine.child.native_log import NativeLog
    from engine.child.session import LlamaSession
    from engine.child.speculative import generate_speculative
    from engine.core.memory_types import PlanSettings
    from engine.core.sampling import SamplingParams
    from engine.protocol import GenerateRequest, LoadParams

    log = NativeLog(
        lambda lvl, msg: print(msg, flush=True) if lvl >= 30 or "MTP" in msg or "nextn" in msg else None
    )
    s = LlamaSession(lambda m: None, log)
    cancel = threading.Event()
    loaded = s.load(1, LoadParams(path, settings=PlanSettings(n_ctx=4096, mtp=True, n_gpu_layers=-1)), cancel)
    result["load"] = {
        "mtp": loaded.mtp,
        "n_layer_nextn": loaded.n_layer_nextn,
        "n_ctx": loaded.n_ctx,
        "flash": s.flash_resolved,
        "memory_log": [ln for ln in loaded.memory_log if "buffer size" in ln or "KV" in ln][:40],
    }
    print("loaded", result["load"]["mtp"], s.flash_resolved, flush=True)
    m, sd = s.model, s.mtp
    greedy = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0).to_dict()

    # --- micro-costs
    prompt = m.tokenize(" ".join(f"w{i}" for i in range(1, 200)))
    m.clear()
    sd.truncate(0)
    sd.prefill(prompt, 0, cancel)
    n = len(prompt)
    last = int(np.argmax(np.ctypeslib.as_array(LL.llama_get_logits_ith(m.ctx, -1), shape=(m.n_vocab,))))
    b = m.batch

    def verify(k: int) -> float:
        for i in range(k + 1):
            b.token[i], b.pos[i], b.logits[i] = (last if i == 0 else 100 + i), n + i, 1
        b.n_tokens = k + 1
        t = time.perf_counter()
        assert LL.llama_decode(m.ctx, b) == 0
        LL.llama_get_logits(m.ctx)
        LL.llama_synchronize(m.ctx)
        return time.perf_counter() - t

    costs: dict[str, float] = {}
    R = 30
    for k in range(0, 5):
        vt, ct = [], []
        for r in range(R + 3):
            v = verify(k)
            t = time.perf_counter()
            sd.process([last] + [100 + i for i in range(1, k + 1)], n)
            LL.llama_synchronize(sd.ctx)
            c = time.perf_counter() - t
            LL.llama_memory_seq_rm(m.mem, 0, n, -1)
            sd.truncate(n)
            if r >= 3:
                vt.append(v)
                ct.append(c)
        costs[f"verify_{k}"] = float(np.median(vt))
        costs[f"catchup_{k}"] = float(np.median(ct))
    costs["plain"] = costs["verify_0"]
    # the drafter needs the target's hidden state of position n-1: re-run the last prompt token
    ds = []
    for _ in range(R + 3):
        t = time.perf_counter()
        sd.draft(last, n, 1)
        ds.append(time.perf_counter() - t)
    costs["draft_step"] = float(np.median(ds[3:]))
    rel = {k: round(v / costs["plain"], 3) for k, v in costs.items()}
    result["costs_ms"] = {k: round(v * 1e3, 3) for k, v in costs.items()}
    result["costs_relative_to_plain_decode"] = rel
    print("costs", result["costs_ms"], flush=True)
    result["modelled_speedup"] = {
        str(a): {f"k={k}": round(speedup(a, k, costs), 3) for k in range(1, 5)} for a in (0.5, 0.7, 0.9)
    }
    print("modelled", result["modelled_speedup"], flush=True)

    # --- end to end (random weights: acceptance ~0, this is the overhead) and greedy identity
    e2e = {}
    same = 0
    prompts = [" ".join(f"w{(7 * j + i) % 5000}" for i in range(40)) for j in range(4)]
    for j, p in enumerate(prompts):
        plain = generate(
            s, GenerateRequest(id=10 + j, prompt=p, max_tokens=128, sampling=greedy, stream=False), cancel
        )
        spec = generate_speculative(
            s,
            GenerateRequest(
                id=20 + j, prompt=p, max_tokens=128, sampling=greedy, stream=False, draft="mtp", draft_max=3
            ),
            cancel,
        )
        same += plain.tokens == spec.tokens
        e2e.setdefault("plain_tps", []).append(round(plain.tokens_per_s, 2))
        e2e.setdefault("mtp_tps", []).append(round(spec.tokens_per_s, 2))
        e2e.setdefault("acceptance", []).append(round(spec.acceptance, 4))
        e2e.setdefault("drafted_at", []).append(spec.drafted_at)
        e2e.setdefault("accepted_at", []).append(spec.accepted_at)
    e2e["greedy_identical"] = f"{same}/{len(prompts)}"
    result["end_to_end"] = e2e
    print("e2e", e2e, flush=True)
    s.unload()
    with open(os.path.join(out, "mtp-gpu.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
