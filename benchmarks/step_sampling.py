"""A batch step's decode and its sampling, without the server around them (issue 23).

    python benchmarks/step_sampling.py MODEL.gguf --out FILE [--seqs 16] [--steps 64]
                                     [--modes none,llama,native-1,native-4,native-16]

``server_vs_llama.py`` measures the whole server; this measures only what llama-batched-bench's
step has and the batch loop adds: ``--seqs`` sequences, each with a 127-token prompt, then
``--steps`` steps of one generated token per sequence (logits for every row), timed as
llama_decode until llama_synchronize returned, then sampling every row with llama-server's
default chain (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8, dist):
- ``none``: no sampling (the next token is fixed): batched-bench's step;
- ``llama``: llama_sampler_sample for each row, one after another;
- ``native-T``: engine.child.topk_cut's one native call on T threads, on logits just copied
  from the device (what the server's loop does);
- ``prewake-T``: the same, the T threads woken while the device decodes (NativeRows.prewake);
- ``cut``: the device keeps each row's 42 best tokens (engine.child.device_cut: top-k 40 and 2
  end-of-generation tokens, as the batch loop attaches it; every row of the step cut at once
  since 2026-12-05's ninth session, one cut per row before) and llama_sampler_sample samples each
  row from those, one after another: what the cut adds to the decode and leaves to sample;
- ``cut-T``: the same cut, its rows in the native call on T threads, read with three calls a
  row (each synchronises);
- ``loop``, ``cut-loop``: the batch loop's own sampler (engine.child.batch_sample.RowSampler, with
  its threads, its prewake and its dense row reads) on whole rows / on the cut: what the server
  does between two decodes, short of following the step.
Each mode starts from an empty cache, so every mode decodes the same positions. Whether the
sampling threads slow the next decode down shows in that mode's decode time against ``none``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp.llama_cpp as LL  # noqa: E402  (before numpy: numpy first segfaults the CUDA build's loads)

from benchmarks.row_sampling import server_chain  # noqa: E402
from engine.child.batch_sample import LEAD_S, LIB, SPIN_S, RowSampler  # noqa: E402  (LIB: logits as ints)
from engine.child.device_cut import ChunkCut  # noqa: E402
from engine.child.topk_cut import NativeRows, chain_address  # noqa: E402

PROMPT = 127


@dataclass
class Row:
    """What the batch loop's sampler reads of a slot (engine.child.batch_sample.Sampled): a
    chain that starts with top-k 40, past its first token."""

    chain: object | None
    chain_at: int
    cut_device: bool
    first: object | None = None
    out: list[int] = field(default_factory=lambda: [0])
    cut: int = 40


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--modes", default="none,llama,native-1,native-4,native-16")
    ap.add_argument(
        "--seq-stride",
        type=int,
        default=1,
        help="sequence ids 0, s, 2s, ... (s > 1: the gaps idle slots leave in a server; with "
        "per-sequence KV streams llama.cpp then splits every step into one ubatch per sequence)",
    )
    a = ap.parse_args()
    LL.llama_backend_init()
    quiet = LL.llama_log_callback(lambda *_: None)  # kept: llama.cpp calls it until exit
    LL.llama_log_set(quiet, ctypes.c_void_p())
    mp = LL.llama_model_default_params()
    mp.n_gpu_layers = -1
    mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
    model = LL.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        print("load failed", file=sys.stderr)
        return 1
    n = a.seqs
    cp = LL.llama_context_default_params()
    stride = a.seq_stride
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n * stride * 2048, 2048, 512, n * stride
    cp.swa_full = False
    ctx = LL.llama_init_from_model(model, cp)
    n_vocab = LL.llama_vocab_n_tokens(LL.llama_model_get_vocab(model))
    mem = LL.llama_get_memory(ctx)
    batch = LL.llama_batch_init(max(n * PROMPT, n), 0, 1)
    get_row = LIB.llama_get_logits_ith

    def cut_of(i: int) -> tuple[int, int]:  # the candidates the device kept for row i
        return LIB.llama_get_sampled_candidates_ith(ctx, i), LL.llama_get_sampled_logits_count_ith(ctx, i)

    def decode(rows: list[tuple[int, int, int, bool]], hook: Callable[[float], None] | None = None) -> float:
        """(token, position, sequence, logits) rows in one llama_decode; its seconds until
        synchronised (``hook(start)`` runs between the call's return and the synchronise)."""
        for i, (tok, pos, seq, out) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, out
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(rows)
        t = time.perf_counter()
        if LL.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        if hook is not None:
            hook(t)
        LL.llama_synchronize(ctx)
        return time.perf_counter() - t

    res: dict = {"model": a.model, "seqs": n, "seq_stride": stride, "steps": a.steps, "modes": {}}
    cuts: list[object] = []  # freed at the end: a detached chain stays in the graphs until the next decode
    for mode in a.modes.split(","):
        LL.llama_memory_clear(mem, True)
        for s in range(n):  # the cut's chains go on before the prompt, off after the mode
            cut = ChunkCut(42).chain() if mode.startswith("cut") else None
            LL.llama_set_sampler(ctx, s * stride, cut)
            if cut is not None:
                cuts.append(cut)
        prompt = [
            (100 + (7 * s + i) % 5000, i, s * stride, i == PROMPT - 1)
            for s in range(n)
            for i in range(PROMPT)
        ]
        for at in range(0, len(prompt), 2048):
            decode(prompt[at : at + 2048])
        chains = [server_chain(s, n_vocab) for s in range(n)]
        threads = mode.split("-")[-1]
        native = NativeRows(n_vocab, int(threads)) if threads.isdigit() else None
        loop = RowSampler(ctx, n_vocab) if mode.endswith("loop") else None
        rows = [Row(c, chain_address(c), mode.startswith("cut")) for c in chains]
        hook = None
        if loop is not None:

            def hook(t0: float, loop: RowSampler = loop) -> None:
                loop.decoding(n, n, t0, True)

        if mode.startswith("prewake") and native is not None:
            expect = [0.0]

            def hook(t0: float, native: NativeRows = native, expect: list[float] = expect) -> None:
                if expect[0]:
                    native.prewake(n, expect[0] - (time.perf_counter() - t0) - LEAD_S, SPIN_S)

        addrs = [chain_address(c) for c in chains]
        toks = [1000 + s for s in range(n)]
        dec, smp = [], []
        for step in range(a.steps):
            dec.append(decode([(toks[s], PROMPT + step, s * stride, True) for s in range(n)], hook))
            if loop is not None:
                loop.decoded(n, dec[-1])
            elif hook is not None:
                expect[0] = dec[-1] if not expect[0] else expect[0] + 0.2 * (dec[-1] - expect[0])
            t = time.perf_counter()
            if loop is not None:
                toks = loop.all(list(enumerate(rows)), dense=True)
            elif mode in ("llama", "cut"):
                toks = [int(LL.llama_sampler_sample(c, ctx, i)) for i, c in enumerate(chains)]
            elif native is not None:
                cut_rows = [cut_of(i) for i in range(n)] if mode.startswith("cut") else None
                toks = native.sample([get_row(ctx, i) for i in range(n)], addrs, [40] * n, cut_rows)
            smp.append(time.perf_counter() - t)
        res["modes"][mode] = {
            "decode_ms_median": round(statistics.median(dec) * 1e3, 3),
            "decode_ms_mean": round(statistics.fmean(dec) * 1e3, 3),
            "sample_ms_median": round(statistics.median(smp) * 1e3, 3),
            "sample_ms_mean": round(statistics.fmean(smp) * 1e3, 3),
        }
        print(mode, json.dumps(res["modes"][mode]), flush=True)
        if loop is not None:
            loop.close()
        for c in chains:
            LL.llama_sampler_free(c)
    for s in range(n):
        LL.llama_set_sampler(ctx, s * stride, None)
    LL.llama_memory_clear(mem, True)
    decode([(1, 0, 0, True)])  # the graphs without the cuts, then the cuts can go
    for c in cuts:
        LL.llama_sampler_free(c)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
