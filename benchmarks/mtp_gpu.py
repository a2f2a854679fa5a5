"""GPU costs of MTP self-drafting on an 8B-class synthetic target with one MTP head.

Writes a Qwen3.5-9B-shaped ``qwen35`` (32 layers, every 4th full attention and the rest gated
delta-net, 4096 wide, 12288 FFN, 16 query heads of 256 with a gate, 4 KV heads, a 151k vocabulary,
Q8_0) plus one nextn head, with random weights (each distinct tensor shape is quantised once from
a small random block and tiled: only the costs matter here). Then, in process, through the
child's own classes (engine.child.session / selfdraft / speculative):

* the cost of one MTP draft step, of a k-token verify batch and of the MTP catch-up after it,
  each relative to one plain single-token decode;
* end-to-end tokens/s with drafting and without (random weights: acceptance near 0, so this is
  the overhead, not the gain), and greedy identity;
* the speed-up those costs give at acceptance 0.5 / 0.7 / 0.9 (per drafted position, i.i.d.):
  E[tokens per step] = (1 - a^(k+1)) / (1 - a) over cost k*draft + verify(k) + catch-up(k).

A hybrid target rolls back rejected drafts from recurrent-state snapshots (n_rs_seq = k + 1).
``MTP_SMALL=1`` shrinks the widths for a CPU run of the same script (``MTP_WORDS`` sets the
vocabulary: the LM head over it is what one draft step costs on a CPU).

Loading: on the H200 the real load of a generated file segfaulted inside llama_model_load_from_file
with the default load mode (AUTO, which maps the file), right after the metadata, while loads with
``LLAMA_LOAD_MODE_NONE`` worked elsewhere; and the team's notes record that with the CUDA build,
importing numpy before llama_cpp segfaulted in the same call (this script used to import numpy and
gguf first). So the measurement loads with NONE (``MTP_LOAD_MODE`` overrides: auto, none, mmap) in a
fresh process that imports llama_cpp first, and before it, each in its own process, probes load the
file (MTP heads, all layers offloaded) with AUTO after llama_cpp, AUTO after numpy and NONE after
numpy, recording ``ok`` or ``segfault`` and llama.cpp's last log lines: the run both diagnoses the
crash and measures. ``MTP_PROBES=0`` skips the probes.

Usage: python mtp_gpu.py OUTDIR [MODELDIR]; on the device, after /work/shared/gpu/README.md's set-up
lines: ``python3 benchmarks/mtp_gpu.py $OUT /tmp/mtp8b`` (results in ``$OUT/mtp-gpu.json``). Dry run
on a CPU: ``MTP_SMALL=1 MTP_WORDS=600 MTP_LAYERS=4 python mtp_gpu.py /tmp/out /tmp/models``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

E, H, HKV, D, FF, N_TRUNK, N_WORDS = 4096, 16, 4, 256, 12288, 32, 151000
SSM = {"conv_kernel": 4, "state_size": 128, "group_count": 16, "time_step_rank": 32, "inner_size": 4096}
ROPE_DIMS, SECTIONS, INTERVAL = 64, [11, 11, 10, 0], 4
if os.environ.get("MTP_MID"):  # a 3B-class fallback if the 8B-class file cannot be loaded
    E, H, D, FF, N_TRUNK = 2048, 8, 256, 6144, 24
    SSM = {**SSM, "group_count": 8, "time_step_rank": 16, "inner_size": 2048}
if os.environ.get("MTP_SMALL"):  # a CPU run of the script itself
    E, H, HKV, D, FF, N_TRUNK = 256, 4, 2, 64, 512, 4
    N_WORDS = int(os.environ.get("MTP_WORDS", "6000"))
    SSM = {"conv_kernel": 4, "state_size": 32, "group_count": 2, "time_step_rank": 4, "inner_size": 128}
    ROPE_DIMS, SECTIONS = 16, [3, 3, 2, 0]
N_TRUNK = int(os.environ.get("MTP_LAYERS", N_TRUNK))
N_WORDS = int(os.environ.get("MTP_WORDS", N_WORDS))
DRAFT_MAX = 4
LOAD_MODES = ("auto", "none", "mmap")
#: (load mode, what is imported first): the order this script used to load in, and the two changes
PROBES = (("auto", "llama_cpp"), ("auto", "numpy"), ("none", "numpy"))
PROBE_TIMEOUT_S = 300
LOG_TAIL = 25


def write_target(path: str) -> None:
    import gguf
    import numpy as np

    Q8 = gguf.GGMLQuantizationType.Q8_0
    rng = np.random.default_rng(0)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def q8(ne0: int, ne1: int) -> np.ndarray:
        if (ne0, ne1) not in cache:
            block = (rng.standard_normal((64, ne0)) * 0.02).astype(np.float32)
            qb = gguf.quants.quantize(block, Q8)
            reps = -(-ne1 // 64)
            cache[(ne0, ne1)] = np.ascontiguousarray(np.tile(qb, (reps, 1))[:ne1])
        return cache[(ne0, ne1)]

    a = "qwen35"
    w = gguf.GGUFWriter(path, a)
    w.add_string("general.name", "synthetic-qwen35-9b-mtp1")
    for k, v in (
        ("context_length", 8192),
        ("embedding_length", E),
        ("block_count", N_TRUNK + 1),
        ("feed_forward_length", FF),
        ("attention.head_count", H),
        ("attention.head_count_kv", HKV),
        ("attention.key_length", D),
        ("attention.value_length", D),
        ("rope.dimension_count", ROPE_DIMS),
        ("full_attention_interval", INTERVAL),
        ("nextn_predict_layers", 1),
    ):
        w.add_uint32(f"{a}.{k}", v)
    for k, v in SSM.items():
        w.add_uint32(f"{a}.ssm.{k}", v)
    w.add_array(f"{a}.rope.dimension_sections", SECTIONS)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 10000000.0)
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

    def vec(name: str, n: int, value: float = 1.0) -> None:
        w.add_tensor(name, np.full(n, value, np.float32))

    def mat(name: str, ne0: int, ne1: int) -> None:
        w.add_tensor(name, q8(ne0, ne1), raw_dtype=Q8)

    key_dim = SSM["state_size"] * SSM["group_count"]
    value_dim = SSM["state_size"] * SSM["time_step_rank"]
    dt_rank, d_conv = SSM["time_step_rank"], SSM["conv_kernel"]
    conv = (rng.standard_normal((key_dim * 2 + value_dim, d_conv)) * 0.1).astype(np.float32)
    mat("token_embd.weight", E, V)
    w.add_tensor("output_norm.weight", ones)
    mat("output.weight", E, V)
    for i in range(N_TRUNK + 1):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones)
        if i < N_TRUNK and (i + 1) % INTERVAL != 0:  # gated delta-net
            mat(f"blk.{i}.attn_qkv.weight", E, key_dim * 2 + value_dim)
            mat(f"blk.{i}.attn_gate.weight", E, value_dim)
            w.add_tensor(f"blk.{i}.ssm_conv1d.weight", conv)
            vec(f"blk.{i}.ssm_dt.bias", dt_rank, 0.0)
            vec(f"blk.{i}.ssm_a", dt_rank, -1.0)
            mat(f"blk.{i}.ssm_beta.weight", E, dt_rank)
            mat(f"blk.{i}.ssm_alpha.weight", E, dt_rank)
            vec(f"blk.{i}.ssm_norm.weight", SSM["state_size"])
            mat(f"blk.{i}.ssm_out.weight", value_dim, E)
        else:  # gated attention (the MTP block is one too)
            mat(f"blk.{i}.attn_q.weight", E, D * H * 2)
            mat(f"blk.{i}.attn_k.weight", E, D * HKV)
            mat(f"blk.{i}.attn_v.weight", E, D * HKV)
            mat(f"blk.{i}.attn_output.weight", D * H, E)
            vec(f"blk.{i}.attn_q_norm.weight", D)
            vec(f"blk.{i}.attn_k_norm.weight", D)
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


def probe(path: str, mode: str, first: str) -> None:
    """A child process: load ``path`` as the measurement does (MTP heads, every layer offloaded)
    with load mode ``mode``, importing ``first`` first; every llama.cpp log line goes to stderr
    as it is written, so the parent keeps the last ones even when the load segfaults."""
    import faulthandler

    faulthandler.enable()  # the Python stack on SIGSEGV: which call crashed
    if first == "numpy":
        import numpy  # noqa: F401
    import llama_cpp.llama_cpp as LL
    from llama_cpp import _logger

    _logger.set_verbose(True)
    LL.llama_backend_init()
    mp = LL.llama_model_default_params()
    mp.n_gpu_layers, mp.load_mtp, mp.load_mode = 999, True, _load_mode(LL, mode)
    t = time.time()
    model = LL.llama_model_load_from_file(os.fsencode(path), mp)
    print(f"PROBE {'loaded' if model else 'refused'} in {time.time() - t:.1f} s", flush=True)
    if model:
        LL.llama_model_free(model)


def _load_mode(LL: object, mode: str) -> int:
    return int(getattr(LL, f"LLAMA_LOAD_MODE_{mode.upper()}"))


def run_probes(path: str) -> list[dict]:
    """Each PROBES load in its own process: 'ok', 'segfault', 'refused', 'timeout' or 'exit N'."""
    out = []
    for mode, first in PROBES:
        t = time.time()
        try:
            p = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--probe", path, mode, first],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one stream, in the order it was written
                text=True,
                timeout=PROBE_TIMEOUT_S,
            )
            rc, text = p.returncode, p.stdout
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or ""
            rc, text = None, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        if rc is None:
            outcome = "timeout"
        elif rc == -11 or "Segmentation fault" in text:
            outcome = "segfault"
        elif rc == 0:
            outcome = "ok" if "PROBE loaded" in text else "refused"
        else:
            outcome = f"exit {rc}"
        row = {
            "load_mode": mode,
            "imported_first": first,
            "outcome": outcome,
            "returncode": rc,
            "seconds": round(time.time() - t, 1),
            "last_log": [ln for ln in text.splitlines() if ln.strip()][-LOG_TAIL:],
        }
        print("probe", {k: v for k, v in row.items() if k != "last_log"}, flush=True)
        out.append(row)
    return out


def main() -> None:
    """Write the target here; probe its loads and measure in fresh processes (llama_cpp first)."""
    out, mdir = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "/tmp/mtp8b")
    os.makedirs(mdir, exist_ok=True)
    path = os.path.join(mdir, "synthetic-qwen35-mtp1.gguf")
    t0 = time.time()
    if not os.path.exists(path):
        write_target(path)
    result: dict = {
        "model": f"qwen35 {E} wide, {N_TRUNK} layers (every {INTERVAL}th attention), {FF} FFN, vocab {N_WORDS + 259}, Q8_0 + 1 MTP head, random weights",
        "file_bytes": os.path.getsize(path),
        "write_s": round(time.time() - t0, 1),
    }
    print("written", result, flush=True)
    name = "mtp-gpu-mid.json" if os.environ.get("MTP_MID") else "mtp-gpu.json"
    if os.environ.get("MTP_PROBES", "1") != "0":
        result["load_probes"] = run_probes(path)
    mode = os.environ.get("MTP_LOAD_MODE", "none")
    if mode not in LOAD_MODES:
        sys.exit(f"MTP_LOAD_MODE must be one of {', '.join(LOAD_MODES)}, not {mode!r}")
    result["load_mode"] = mode
    with open(os.path.join(out, name), "w") as f:
        json.dump(result, f, indent=1)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", out, path, name])
    if p.returncode:
        with open(os.path.join(out, name)) as f:
            result = json.load(f)
        result["measure_returncode"] = p.returncode  # -11: the measured load segfaulted too
        with open(os.path.join(out, name), "w") as f:
            json.dump(result, f, indent=1)
        print("measurement exited with", p.returncode, flush=True)


def measure(out: str, path: str, name: str) -> None:
    """A fresh process: llama_cpp imported before numpy; loads with ``MTP_LOAD_MODE`` (NONE)."""
    import faulthandler

    import llama_cpp.llama_cpp as LL  # before numpy: see the module docstring
    import numpy as np

    faulthandler.enable()
    t0 = time.time()
    with open(os.path.join(out, name)) as f:
        result = json.load(f)

    def save() -> None:  # after every stage: a run cut short still reports what it measured
        with open(os.path.join(out, name), "w") as f:
            json.dump(result, f, indent=1)

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
    load_mode = _load_mode(LL, result["load_mode"])

    class Session(LlamaSession):  # the child's session, with the load mode chosen here
        def model_params(self, *args: object, **kwargs: object) -> tuple[object, list[object]]:
            mp, keep = super().model_params(*args, **kwargs)  # type: ignore[arg-type]
            mp.load_mode = load_mode
            return mp, keep

    s = Session(lambda m: None, log)
    cancel = threading.Event()
    settings = PlanSettings(n_ctx=4096, mtp=True, n_gpu_layers=-1, n_rs_seq=DRAFT_MAX + 1)
    loaded = s.load(1, LoadParams(path, settings=settings), cancel)
    result["load"] = {
        "mtp": loaded.mtp,
        "n_layer_nextn": loaded.n_layer_nextn,
        "n_ctx": loaded.n_ctx,
        "flash": s.flash_resolved,
        "memory_log": [ln for ln in loaded.memory_log if "buffer size" in ln or "KV" in ln][:40],
    }
    print("loaded", result["load"]["mtp"], s.flash_resolved, flush=True)
    result["load_s"] = round(time.time() - t0, 1)
    save()
    m, sd = s.model, s.mtp
    greedy = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0).to_dict()
    if os.environ.get("MTP_CHECK"):  # the shapes load and draft: stop before measuring
        req = GenerateRequest(
            id=9, prompt="w1 w2 w3", max_tokens=6, sampling=greedy, draft="mtp", draft_max=3
        )
        print("check", generate_speculative(s, req, cancel).tokens, flush=True)
        return

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
    save()

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
        result["end_to_end"] = e2e
        save()
    e2e["greedy_identical"] = f"{same}/{len(prompts)}"
    print("e2e", e2e, flush=True)
    save()
    s.unload()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--measure"]:
        measure(*sys.argv[2:5])
    else:
        main()
