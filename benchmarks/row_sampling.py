"""What sampling the rows of one batch step costs on this host's CPU, no GPU needed.

    python benchmarks/row_sampling.py [--vocab 128256] [--k 40] [--out FILE]

For 1, 4, 16 and 64 rows of random logits (a 128k vocabulary by default), each with its own
llama-server default chain (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8, dist):
- ``llama``: llama.cpp's own way, one row after another: every token written into the chain's
  candidate array, then the chain (what ``llama_sampler_sample`` does, src/llama-sampler.cpp;
  before 2026-12-05's afternoon this baseline made a fresh array each call, which overstated it);
- ``native``: engine.child.topk_cut's one call over all rows, on 1 thread and on as many
  threads as the batch loop uses (engine.child.batch_sample.workers);
- ``greedy``: the same call for rows without a chain (llama.cpp's greedy sampler).
Milliseconds per step (all rows), the median of ``--reps`` steps; ``--gap-ms`` idles before each
step as a decode would, so that the threads have gone to sleep (what waking them costs).
``--cold`` reads 256 MiB before each step, so that the rows come from memory as a step's logits
do (the device's copy just wrote them), and adds the native pass on 1 thread for each row pass
the CPU has (``_rowsample.row_pass``: ``avx``, with prefetching, and ``portable``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp.llama_cpp as LL  # noqa: E402  (before numpy: the CUDA build's libraries first)
import numpy as np  # noqa: E402

from engine.child.batch_sample import LEAD_S, SPIN_S, workers  # noqa: E402
from engine.child.sampler import build_chain  # noqa: E402
from engine.child.topk_cut import NATIVE, NativeRows, chain_address  # noqa: E402

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def server_chain(seed: int, n_vocab: int) -> object:
    """llama-server's default chain, built as the batch loop builds chains."""
    return build_chain(
        (("top_k", 40), ("top_p", 0.95), ("min_p", 0.05), ("temp", 0.8), ("dist", seed)), n_vocab
    )


#: A candidate array per chain and vocabulary, kept between calls as llama.cpp keeps ``chain->cur``.
BUFFERS: dict[tuple[int, int], np.ndarray] = {}


def llama_way(c: object, row: np.ndarray) -> int:
    """``llama_sampler_sample``'s work on ``row``: every token written into the chain's candidate
    array (id, logit and p: the chain sorted the last one in place), the chain, the accept."""
    key = (chain_address(c), len(row))
    buf = BUFFERS.get(key)
    if buf is None:
        buf = BUFFERS[key] = np.zeros(len(row), dtype=TOKEN_DATA)
    buf["id"], buf["logit"], buf["p"] = np.arange(len(row)), row, 0.0
    arr = LL.llama_token_data_array(
        buf.ctypes.data_as(ctypes.POINTER(LL.llama_token_data)), len(row), -1, False
    )
    LL.llama_sampler_apply(c, ctypes.byref(arr))
    tok = int(arr.data[arr.selected].id)
    LL.llama_sampler_accept(c, tok)
    return tok


def llama_rows(chains: list[object], logits: np.ndarray) -> list[int]:
    return [llama_way(c, r) for c, r in zip(chains, logits)]


GAP_S = 0.0
#: Read before each step with ``--cold``: larger than any host's last-level cache.
EVICT: np.ndarray | None = None


def evict() -> None:
    if EVICT is not None:
        EVICT.sum()


def median_ms(step, reps: int, *args: object, before=None) -> float:
    """The median milliseconds of ``step(*args)``, each call ``GAP_S`` after the last one ended
    (``before()`` at the start of that gap)."""
    step(*args)
    times = []
    for _ in range(reps):
        evict()
        if before is not None:
            before()
        time.sleep(GAP_S)
        t = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1e3, 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="idle time before each step, as a decode gives (threads fall asleep)",
    )
    ap.add_argument("--cold", action="store_true", help="rows from memory, not from the caches")
    args = ap.parse_args()
    global GAP_S, EVICT
    GAP_S = args.gap_ms / 1e3
    EVICT = np.ones(64 << 20, dtype=np.float32) if args.cold else None
    rng = np.random.default_rng(0)
    threads = workers()
    res: dict = {
        "vocab": args.vocab,
        "threads": threads,
        "chain": "top_k 40, top_p 0.95, min_p 0.05, temp 0.8, dist",
        "cold": args.cold,
        "row_pass": NATIVE.row_pass() if NATIVE is not None else None,
    }
    rows_out = []
    for n in (1, 4, 16, 64):
        logits = (rng.standard_normal((n, args.vocab)) * 3).astype(np.float32)
        chains = [server_chain(i, args.vocab) for i in range(n)]
        ptrs = [logits[i].ctypes.data for i in range(n)]
        addrs = [chain_address(c) for c in chains]
        one, many = NativeRows(args.vocab, 1), NativeRows(args.vocab, threads)
        ks, greedy = [40] * n, [0] * n
        row = {
            "rows": n,
            "llama_ms": median_ms(llama_rows, max(3, args.reps // 5), chains, logits),
            "native_1_thread_ms": median_ms(one.sample, args.reps, ptrs, addrs, ks),
            f"native_{threads}_threads_ms": median_ms(many.sample, args.reps, ptrs, addrs, ks),
            f"greedy_{threads}_threads_ms": median_ms(many.sample, args.reps, ptrs, greedy, [1] * n),
            "numpy_argmax_ms": median_ms(np.argmax, args.reps, logits, 1),
        }
        if args.cold and NATIVE is not None:
            was = NATIVE.row_pass()
            for name in ("portable", "avx"):
                try:
                    NATIVE.row_pass(name)
                except ValueError:  # not on this CPU
                    continue
                row[f"native_1_thread_{name}_ms"] = median_ms(one.sample, args.reps, ptrs, addrs, ks)
            NATIVE.row_pass(was)
        if GAP_S:  # the threads woken during the gap, as the batch loop does during a decode

            def wake(many: NativeRows = many, n: int = n) -> None:
                many.prewake(n, GAP_S - LEAD_S, SPIN_S)

            row[f"native_{threads}_threads_prewoken_ms"] = median_ms(
                many.sample, args.reps, ptrs, addrs, ks, before=wake
            )
        rows_out.append(row)
        print(json.dumps(row), flush=True)
        for c in chains:
            LL.llama_sampler_free(c)
    res["steps"] = rows_out
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
