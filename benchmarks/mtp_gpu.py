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
  E[tokens per step] = (1 - a^(k+1)) / (1 - a) over one step's cost. As the engine drafts
  (``SelfDraft.draft_many`` with a single head): the previous step's catch-up (its last token and
  the j drafts it accepted, 1 + j rows) rides in the first draft decode, so a step costs
  first(j) + (k-1)*draft + verify(k), with first(j) timed through ``SelfDraft.draft`` after such a
  verify and j distributed as the acceptance makes it (a^j (1-a) for j < k, a^k for j = k):
  ``modelled_speedup``. The conservative variant ``modelled_speedup_eager_catchup`` counts the
  catch-up as a decode of its own, k*draft + verify(k) + catch-up(k) (``SelfDraft.catch_up``),
  as chained heads (several per model) and a backlog that overflows the batch still do.

A hybrid target rolls back rejected drafts from recurrent-state snapshots (n_rs_seq = k + 1).
``--shape tiny`` shrinks everything for a CPU rehearsal of the same script in seconds; ``--words``
sets the vocabulary (the LM head over it is what one draft step costs on a CPU), ``--layers`` the
trunk. The JSON names the shape and ggml's devices, so a rehearsal is never read as a GPU
result. Its summary keys are the issue's: ``greedy_identical``,
``acceptance`` (per draft position) and ``speedup`` (measured end to end, and modelled).

Time on an H200 at the 8B shape (estimated from the steps; nothing below has run there yet): the
8.9 GB write took 7.5 s there (session 3); three probe loads and the measured load, each of a file
in the page cache, some seconds each (a hung probe is cut at PROBE_TIMEOUT_S); the micro-costs
are ~370 decodes of a few ms; the end-to-end part is 4 x 128 tokens plain and 4 x 128 drafted
(about 128 verify steps each at random acceptance). About 1-2 minutes in all; the script stops
measuring at ``--budget`` seconds (default 420) so that one 600 s device call always returns it.

Loading: on the H200 the real load of a generated file segfaulted inside llama_model_load_from_file
with the default load mode (AUTO, which maps the file), right after the metadata, while loads with
``LLAMA_LOAD_MODE_NONE`` worked elsewhere; and the team's notes record that with the CUDA build,
importing numpy before llama_cpp segfaulted in the same call (this script used to import numpy and
gguf first). So the measurement loads with NONE (``--load-mode``: auto, none or mmap) in a
fresh process that imports llama_cpp first, and before it, each in its own process, probes load the
file (MTP heads, all layers offloaded) with AUTO after llama_cpp, AUTO after numpy and NONE after
numpy, recording ``ok`` or ``segfault`` and llama.cpp's last log lines: the run both diagnoses the
crash and measures (benchmarks/mtp_load_probes.py). ``--no-probes`` skips the probes,
``--load-mode`` chooses the measured load's mode.

Usage: python mtp_gpu.py OUTDIR [MODELDIR] [--shape 8b|mid|tiny]; on the device, after
/work/shared/gpu/README.md's set-up lines: ``python3 benchmarks/mtp_gpu.py $OUT /tmp/mtp8b``
(results in ``$OUT/mtp-gpu-8b.json``). Rehearsal on a CPU (14 s here, with the packages the GPU
machine lacks blocked: PySide6, platformdirs, starlette, uvicorn):
``cd /tmp && PYTHONPATH=KVDECK python KVDECK/benchmarks/mtp_gpu.py /tmp/out /tmp/models --shape tiny``
(30 s on the shared 2-core VM; run outside the source tree, as the runtime child is); and the 8B widths
with a short trunk and vocabulary load and draft on the CPU too (10 s, 1.2 GB file):
``... --shape 8b --layers 4 --words 1000 --no-probes --check``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.mtp_gpu_target import INTERVAL, SHAPES, write_target  # noqa: E402
from benchmarks.mtp_load_probes import load_mode, run_probes  # noqa: E402

DRAFT_MAX = 4
LOAD_MODES = ("auto", "none", "mmap")


def speedup(a: float, k: int, c: dict[str, float], eager: bool = False) -> float:
    """Plain-decode time of the expected tokens of one drafted step over that step's time: the
    catch-up riding in the first draft decode (the engine's single head), or, ``eager``, as a
    decode of its own (the conservative variant)."""
    expected = (1 - a ** (k + 1)) / (1 - a)
    if eager:
        step = k * c["draft_step"] + c[f"verify_{k}"] + c[f"catchup_{k}"]
    else:
        p_kept = [a**j * (1 - a) for j in range(k)] + [a**k]  # j drafts accepted of k
        first = sum(p * c[f"draft_first_{j}"] for j, p in enumerate(p_kept))
        step = first + (k - 1) * c["draft_step"] + c[f"verify_{k}"]
    return expected * c["plain"] / step


def main() -> None:
    """Write the target here; probe its loads and measure in fresh processes (llama_cpp first)."""
    ap = argparse.ArgumentParser(description="GPU costs of MTP self-drafting (see the module docstring)")
    ap.add_argument("out", help="folder for the result JSON")
    ap.add_argument("models", nargs="?", default="/tmp/mtp8b", help="folder for the generated GGUF")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--words", type=int, help="vocabulary size (default: the shape's)")
    ap.add_argument("--layers", type=int, help="trunk layers (default: the shape's)")
    ap.add_argument("--load-mode", choices=LOAD_MODES, default="none", help="the measured load's mode")
    ap.add_argument("--no-probes", action="store_true", help="skip the load probes")
    ap.add_argument("--check", action="store_true", help="load and draft a few tokens, measure nothing")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which measuring stops")
    args = ap.parse_args()
    if args.layers is not None and args.layers < INTERVAL:  # no attention layer: llama.cpp aborts
        ap.error(f"--layers must be at least {INTERVAL} (every {INTERVAL}th layer is the trunk's attention)")
    os.makedirs(args.models, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    tag = args.shape + (f"-w{args.words}" if args.words else "") + (f"-l{args.layers}" if args.layers else "")
    path = os.path.join(args.models, f"synthetic-qwen35-mtp1-{tag}.gguf")
    t0 = time.time()
    result: dict = {"shape": args.shape, "model": write_target(path, args.shape, args.words, args.layers)}
    result |= {"file_bytes": os.path.getsize(path), "write_s": round(time.time() - t0, 1)}
    print("written", result, flush=True)
    name = f"mtp-gpu-{tag}.json"
    if not args.no_probes:
        result["load_probes"] = run_probes(path)
    result["load_mode"] = args.load_mode
    result["deadline"] = t0 + args.budget
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(result, f, indent=1)
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", args.out, path, name, str(int(args.check))]
    try:  # the end-to-end part stops at the budget; this is for a load or decode that hangs
        rc: int | str = subprocess.run(cmd, timeout=max(60.0, t0 + args.budget + 90 - time.time())).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if rc:
        with open(os.path.join(args.out, name)) as f:
            result = json.load(f)
        result["measure_returncode"] = rc  # -11: the measured load segfaulted too
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(result, f, indent=1)
        print("measurement exited with", rc, flush=True)


def measure(out: str, path: str, name: str, check: str = "0") -> None:
    """A fresh process: llama_cpp imported before numpy; loads with ``--load-mode`` (NONE)."""
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

    from engine.child.bench import devices
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
    mode = load_mode(LL, result["load_mode"])

    class Session(LlamaSession):  # the child's session, with the load mode chosen here
        def model_params(self, *args: object, **kwargs: object) -> tuple[object, list[object]]:
            mp, keep = super().model_params(*args, **kwargs)  # type: ignore[arg-type]
            mp.load_mode = mode
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
    result["devices"] = devices()  # only "CPU: ..." on a rehearsal (llama_supports_gpu_offload is
    # true on a CPU build too: it counts the RPC backend, src/llama.cpp:102-108)
    save()
    m, sd = s.model, s.mtp
    greedy = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0).to_dict()
    if check == "1":  # the shapes load and draft: stop before measuring
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
    sd.catch_up()
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
            sd.catch_up()  # what an eager catch-up costs (a drafting sequence's rides in its draft)
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
    # the first draft decode after a verify of 4 drafts of which j were accepted: the catch-up's
    # 1 + j rows (the verify's last token and the accepted drafts) ride in it, as in the engine
    for j in range(DRAFT_MAX + 1):
        fs = []
        for _r in range(R + 3):
            verify(DRAFT_MAX)
            sd.process([last] + [100 + i for i in range(1, DRAFT_MAX + 1)], n)
            LL.llama_memory_seq_rm(m.mem, 0, n, -1)  # the target's part is done (one rollback:
            sd.accept(j)  # a hybrid's snapshots allow one); the drafter keeps 1 + j rows
            sd.truncate(n + 1 + j)
            t = time.perf_counter()
            sd.draft(100 + j + 1, n + 1 + j, 1)
            LL.llama_synchronize(sd.ctx)
            fs.append(time.perf_counter() - t)
            sd.truncate(n)
        costs[f"draft_first_{j}"] = float(np.median(fs[3:]))
    rel = {k: round(v / costs["plain"], 3) for k, v in costs.items()}
    result["costs_ms"] = {k: round(v * 1e3, 3) for k, v in costs.items()}
    result["costs_relative_to_plain_decode"] = rel
    print("costs", result["costs_ms"], flush=True)
    for key, eager in (("modelled_speedup", False), ("modelled_speedup_eager_catchup", True)):
        result[key] = {
            str(a): {f"k={k}": round(speedup(a, k, costs, eager), 3) for k in range(1, 5)}
            for a in (0.5, 0.7, 0.9)
        }
        print(key, result[key], flush=True)
    save()

    # --- end to end (random weights: acceptance ~0, this is the overhead) and greedy identity
    e2e: dict = {}
    same = 0
    prompts = [" ".join(f"w{(7 * j + i) % 5000}" for i in range(40)) for j in range(4)]
    for j, p in enumerate(prompts):
        if time.time() > result["deadline"]:  # one device call must return what was measured
            e2e["stopped"] = f"at the budget, after {j} of {len(prompts)} prompts"
            break
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
        # which prompts, and where they part: compare with batch_invariance.py's flips
        diverge = next((i for i, (a, b) in enumerate(zip(plain.tokens, spec.tokens)) if a != b), None)
        e2e.setdefault("first_divergence", []).append(diverge)
        e2e.setdefault("plain_tps", []).append(round(plain.tokens_per_s, 2))
        e2e.setdefault("mtp_tps", []).append(round(spec.tokens_per_s, 2))
        e2e.setdefault("drafted_at", []).append(spec.drafted_at)
        e2e.setdefault("accepted_at", []).append(spec.accepted_at)
        result["end_to_end"] = e2e
        result |= summary(e2e, same, result["modelled_speedup"])
        save()
    print("e2e", e2e, flush=True)
    s.unload()


def summary(e2e: dict, same: int, modelled: dict) -> dict:
    """The issue's keys: greedy identity, acceptance per draft position, the speed-up."""
    drafted = [sum(col) for col in zip(*e2e["drafted_at"])]
    accepted = [sum(col) for col in zip(*e2e["accepted_at"])]
    ratios = sorted(b / a for a, b in zip(e2e["plain_tps"], e2e["mtp_tps"]) if a > 0)
    return {
        "greedy_identical": f"{same}/{len(e2e['plain_tps'])}",
        "acceptance": {
            "by_position": [round(c / d, 4) if d else None for d, c in zip(drafted, accepted)],
            "drafted_at": drafted,
            "accepted_at": accepted,
        },
        "speedup": {
            "end_to_end_median": round(ratios[len(ratios) // 2], 3) if ratios else None,
            "modelled_by_acceptance": modelled,  # the engine's step (modelled_speedup)
            "note": "random weights accept at chance: the measured figure is drafting's overhead, "
            "the modelled ones what the measured costs give at acceptance 0.5/0.7/0.9",
        },
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(*sys.argv[2:6])
    else:
        main()
