"""Is plain greedy decoding batch-invariant on this backend? (issue 19)

    python benchmarks/batch_invariance.py MODEL.gguf --out FILE [--ngl -1] [--rows 2,4]

Speculative decoding verifies k drafted tokens in one (k+1)-row batch, while plain decoding
evaluates one row at a time. Greedy output with drafting can equal plain greedy output token
for token only where the backend gives the same argmax for a position whichever batch it is
in. This measures exactly that, with no drafting involved:

1. for each prompt, plain greedy decoding one token at a time gives the tokens T and, at every
   step, the logits' top-1 / top-2 gap;
2. the same prompt is decoded again and T is fed back in batches of ``rows`` tokens (as a
   verify batch feeds them), every row's argmax is compared with T's next token.

A position "flips" when its argmax differs. Flips happen where the top two logits are nearly
tied and the two batch shapes take different kernels (on CUDA, e.g. a matrix-vector kernel for
one row and a tiled matrix-matrix kernel for several, which sum in another order); random
weights are full of such near-ties. Writes the counts, the largest logit difference and the
gaps at the flipped positions.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time

import llama_cpp.llama_cpp as LL  # before numpy: numpy first segfaults the CUDA build's loads
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ngl", type=int, default=-1)
    ap.add_argument("--rows", default="2,4", help="batch sizes of the second pass")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    t0 = time.time()
    LL.llama_backend_init()
    quiet = LL.llama_log_callback(lambda *_: None)  # kept: llama.cpp calls it until exit
    LL.llama_log_set(quiet, ctypes.c_void_p())
    mp = LL.llama_model_default_params()
    mp.n_gpu_layers = a.ngl
    mp.load_mode = LL.LLAMA_LOAD_MODE_NONE
    model = LL.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        print("load failed", file=sys.stderr)
        return 1
    cp = LL.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 4096, 512, 512
    ctx = LL.llama_init_from_model(model, cp)
    vocab = LL.llama_model_get_vocab(model)
    n_vocab = LL.llama_vocab_n_tokens(vocab)
    mem = LL.llama_get_memory(ctx)
    batch = LL.llama_batch_init(512, 0, 1)

    def decode(tokens: list[int], pos0: int, all_logits: bool) -> list[np.ndarray]:
        """One llama_decode of ``tokens``; the logits of every row (or only of the last)."""
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos0 + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        if LL.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        rows = range(len(tokens)) if all_logits else [len(tokens) - 1]
        return [np.ctypeslib.as_array(LL.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy() for i in rows]

    def tokenize(text: str) -> list[int]:
        buf = (LL.llama_token * 4096)()
        n = LL.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 4096, True, False)
        return list(buf[:n])

    rows_list = [int(x) for x in a.rows.split(",")]
    res: dict = {"model": a.model, "ngl": a.ngl, "tokens": a.tokens, "prompts": [], "rows": rows_list}
    for j in range(a.prompts):
        prompt = tokenize(" ".join(f"w{(7 * j + i) % 5000}" for i in range(40)))
        LL.llama_memory_clear(mem, True)
        logits = decode(prompt, 0, False)[0]
        seq, ref = [], []  # the greedy tokens and the logits each was chosen from
        for step in range(a.tokens):
            ref.append(logits)
            seq.append(int(np.argmax(logits)))
            logits = decode([seq[-1]], len(prompt) + step, False)[0]
        entry: dict = {"prompt": j}
        for rows in rows_list:
            LL.llama_memory_clear(mem, True)
            first = decode(prompt, 0, False)[0]  # predicts seq[0], as in the plain pass
            got, diff = [first], []
            for s in range(0, a.tokens - 1, rows):  # row i of a batch predicts the token after it
                got += decode(seq[s : min(s + rows, a.tokens - 1)], len(prompt) + s, True)
            flips = [i for i in range(a.tokens) if int(np.argmax(got[i])) != seq[i]]
            diff = [float(np.max(np.abs(got[i] - ref[i]))) for i in range(a.tokens)]
            gaps = [float(np.sort(ref[i])[-1] - np.sort(ref[i])[-2]) for i in flips]
            entry[f"rows={rows}"] = {
                "flips": len(flips),
                "first_flip": flips[0] if flips else None,
                "max_abs_logit_diff": round(max(diff), 6),
                "gap_at_flips": [round(g, 6) for g in gaps[:8]],
            }
        gaps_all = [float(np.sort(r)[-1] - np.sort(r)[-2]) for r in ref]
        entry["median_top2_gap"] = round(float(np.median(gaps_all)), 6)
        res["prompts"].append(entry)
        print(json.dumps(entry), flush=True)
    res["batch_invariant"] = all(e[f"rows={r}"]["flips"] == 0 for e in res["prompts"] for r in rows_list)
    res["seconds"] = round(time.time() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print("batch_invariant", res["batch_invariant"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
