"""``kvdeck serve`` against llama.cpp's own tools, same model, same load, one run (the GPU machine).

    python benchmarks/server_vs_llama.py --bin DIR [--shape llama3-8b] [--parallel 16]
                                        [--clients 1,4,16,64] [--pp 128] [--tg 128] [--out FILE]
                                        [--threads N] [--no-llama-server] [--label TEXT]

On a CPU (``--model`` a real GGUF, ``--threads`` the same for every program) ``--no-llama-server``
compares kvdeck with ``llama-batched-bench`` alone, the one llama.cpp target worth building there.

1. Writes a synthetic Q4_0 GGUF of ``--shape`` (benchmarks/synthetic_gguf.py).
2. ``llama-batched-bench`` at B = each client count (prompt ``--pp``, generation ``--tg``): the
   ceiling for batched decoding on this GPU, no HTTP, no scheduling.
3. ``kvdeck serve --parallel N`` and ``llama-server -np N`` (same context per sequence), each
   driven by the same streaming /v1/completions clients (benchmarks/sse_clients.py, as in server_load.py):
   aggregate t/s = completion tokens / wall time of the round; decode t/s = tokens after each
   request's first one / (last reply's end - first token of the round), which counts the prefill
   of requests that start after the first token; steady decode t/s = the same while every slot
   the round can fill is decoding (``steady_decode``: batched-bench's S_TG, client side); time
   to first token.
4. Prompt-prefix reuse: a request with a long shared prefix, then another with the same prefix
   and a different tail; time to first token of both, and kvdeck's ``cached_tokens``.
5. For kvdeck, where its batch loop's time went in each round (``/v1/kvdeck/memory``'s
   ``batch_loop``): steps, ms per step in llama_decode (until the device finished), sampling
   and the rest, and the share outside llama_decode. ``--serial-sampling`` adds a second kvdeck
   pass that samples the rows of a step one after another (``KVDECK_SAMPLE_THREADS=1``), the
   loop before parallel sampling; ``--backend-sampling`` adds a kvdeck pass that samples on the
   device (``KVDECK_BACKEND_SAMPLING=1``, engine.child.batch_backend: its ``sample_ms_per_step``
   is then only the CPU's share, the device's is inside ``decode_ms_per_step``) and, with
   ``--llama-backend-sampling``, llama-server with ``--backend-sampling`` too; ``--before FILE``
   keeps an earlier result's table as "before".

Random weights make end-of-generation as likely as any other token (1 in 128k per step), so the
replies run to ``--tg`` tokens on both servers; the figures count what the servers report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sse_clients import TIMEOUT_S, fan_out, stream  # noqa: E402
from benchmarks.step_windows import TraceFile, window_steps  # noqa: E402
from engine.child.step_trace import Step  # noqa: E402

WORDS = (
    "river stone light window garden market letter morning silver engine harbor "
    "mountain lantern paper orange winter valley forest bridge thunder"
).split()


def prompt_text(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words))


def stream_request(
    url: str, prompt: str, max_tokens: int, seed: int, http: httpx.Client | None = None
) -> dict:
    """One streamed completion (``http``: a client made before the round's clock starts)."""
    if http is None:
        with httpx.Client(timeout=TIMEOUT_S) as own:
            return stream_request(url, prompt, max_tokens, seed, own)
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "top_k": 40,
        "seed": seed,
    }
    r = stream(http, f"{url}/v1/completions", body)
    if not r["ok"]:
        return r
    usage, timings = r["usage"], r["timings"]
    tokens = usage.get("completion_tokens") or timings.get("predicted_n") or r["chunks"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", timings.get("cache_n"))
    return {
        "ok": True,
        "t0": r["t0"],
        "first": r["first"] or r["end"],
        "end": r["end"],
        "tokens": int(tokens),
        "times": r["times"],
        "counts": r["counts"],
        "prompt_tokens": usage.get("prompt_tokens", timings.get("prompt_n")),
        "cached": cached,
    }


def steady_windows(ok: list[dict], streams: int) -> list[tuple[float, float]]:
    """The spans in which ``streams`` replies decode at once (each past its first token, before
    its end), as the client saw them."""
    edges = sorted([(r["first"], 1) for r in ok] + [(r["end"], -1) for r in ok])
    windows, active, start = [], 0, 0.0
    for t, step in edges:
        was, active = active, active + step
        if was < streams <= active:
            start = t
        elif active < streams <= was:
            windows.append((start, t))
    return windows


def timeline(ok: list[dict], streams: int) -> dict:
    """Each reply's start, first token, end, tokens and chunks (time, tokens so far), and the
    steady windows, in seconds from the round's first request: where a round's steady decode
    went (the 64-client round's fell short of its 16-client one with the same step times,
    2026-12-05), and enough to count it again another way."""
    t = min(r["t0"] for r in ok)
    return {
        "origin": t,  # the clients' perf_counter at 0, for kvdeck's step trace (step_windows)
        "replies": [
            [
                round(r["t0"] - t, 4),
                round(r["first"] - t, 4),
                round(r["end"] - t, 4),
                r["tokens"],
                [[round(c - t, 4), n] for c, n in zip(r["times"], r.get("counts") or [])],
            ]
            for r in sorted(ok, key=lambda r: r["t0"])
        ],
        "windows": [[round(a - t, 4), round(b - t, 4)] for a, b in steady_windows(ok, streams)],
    }


def steady_decode(ok: list[dict], streams: int) -> tuple[float | None, float]:
    """Generated t/s while ``streams`` replies decode at once (each past its first token, before
    its end), and how many seconds that was: llama-batched-bench's ``S_TG`` measured from the
    client side. Prefill steps of requests that start later, and the ramps at a round's start and
    end, fall outside. A chunk's tokens are the ones the server says came since the chunk before
    (``counts``: ``timings.predicted_n`` with ``timings_per_token``, llama-server's and kvdeck's),
    decoded evenly since then, so a chunk that straddles a window's edge counts in part. A server
    that does not say: the first chunk is the first token alone and each later one holds the
    other tokens / the other chunks. Crediting every chunk with tokens / chunks, as before
    2026-12-05's seventh session, understated kvdeck, whose chunks hold what came in 20 ms and
    whose first chunk is the first token alone, by about T (C - 1) / (C (T - 1)): 4 % at one
    client (128 tokens in 20 chunks), 1.3 % at 16."""
    windows = steady_windows(ok, streams)
    span = sum(e - s for s, e in windows)
    tokens = 0.0
    for r in ok:
        times, counts = r["times"], r.get("counts")
        if len(times) > 1:
            per_chunk = (r["tokens"] - 1) / (len(times) - 1)
            for j, (a, b) in enumerate(zip(times, times[1:]), 1):  # decoded since the chunk before
                n = counts[j] - counts[j - 1] if counts else per_chunk
                inside = sum(max(0.0, min(b, e) - max(a, s)) for s, e in windows)
                tokens += n * (inside / (b - a) if b > a else any(s < b <= e for s, e in windows))
    return (round(tokens / span, 1) if span > 0 else None), round(span, 3)


def run_round(url: str, clients: int, per_client: int, pp_words: int, tg: int, streams: int) -> dict:
    def request(http: httpx.Client, c: int, k: int) -> dict:
        return stream_request(url, prompt_text(c * per_client + k, pp_words), tg, c * 1000 + k, http)

    results, wall = fan_out(clients, per_client, request)
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    span = max(r["end"] for r in ok) - min(r["first"] for r in ok) if ok else 0.0
    ttft = [r["first"] - r["t0"] for r in ok]
    steady, steady_s = steady_decode(ok, streams)
    return {
        "clients": clients,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": [r for r in results if not r["ok"]][:2],
        "tokens": tokens,
        "chunks": sum(len(r["times"]) for r in ok),  # fewer than tokens: the server coalesced some
        "prompt_tokens": ok[0]["prompt_tokens"] if ok else None,
        "wall_s": round(wall, 3),
        "aggregate_tps": round(tokens / wall, 1) if wall else 0.0,
        "decode_tps": round(sum(r["tokens"] - 1 for r in ok) / span, 1) if span > 0 else 0.0,
        "steady_decode_tps": steady,
        "steady_window_s": steady_s,
        "ttft_median_s": round(statistics.median(ttft), 4) if ttft else None,
        "ttft_max_s": round(max(ttft), 4) if ttft else None,
        "timeline": timeline(ok, streams) if ok else None,
    }


def prefix_reuse(url: str, prefix_words: int) -> dict:
    long = prompt_text(99, prefix_words)
    a = stream_request(url, long + " first question about the river", 4, 1)
    b = stream_request(url, long + " another question about the garden", 4, 2)
    if not (a["ok"] and b["ok"]):
        return {"failed": [a, b]}
    return {
        "prefix_words": prefix_words,
        "prompt_tokens": a.get("prompt_tokens"),
        "ttft_first_s": round(a["first"] - a["t0"], 4),
        "ttft_second_s": round(b["first"] - b["t0"], 4),
        "cached_tokens_first": a.get("cached"),
        "cached_tokens_second": b.get("cached"),
    }


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become healthy")


def loop_stats(url: str) -> dict | None:
    """kvdeck's batch-loop totals (None from a server without /v1/kvdeck/memory)."""
    try:
        r = httpx.get(f"{url}/v1/kvdeck/memory", timeout=60)
    except httpx.HTTPError:
        return None
    return r.json().get("batch_loop") if r.status_code == 200 else None


def followed(before: dict, after: dict) -> dict:
    """Steps launched as soon as the step before was sampled (engine.child.batch.BatchLoop.step),
    and the milliseconds from that step's logits to the launch: what separates two decodes."""
    n = after.get("followed", 0) - before.get("followed", 0)
    gap = after.get("relaunch_s", 0.0) - before.get("relaunch_s", 0.0)
    return {"followed": n, "relaunch_ms": round(gap / n * 1e3, 3) if n else None}


def loop_share(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after or after["steps"] <= before["steps"]:
        return None
    d = {k: after[k] - before[k] for k in ("steps", "decode_s", "sample_s", "busy_s")}
    n = d["steps"]
    keys = ("gen_steps", "gen_decode_s", "gen_sample_s", "reorder_s", "native_s")
    gen = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    extra = (
        {
            "gen_steps": gen["gen_steps"],
            "gen_decode_ms_per_step": round(gen["gen_decode_s"] / gen["gen_steps"] * 1e3, 3),
            "gen_sample_ms_per_step": round(gen["gen_sample_s"] / gen["gen_steps"] * 1e3, 3),
            "native_ms_per_step": round(gen["native_s"] / n * 1e3, 3),
            "reorder_ms_per_step": round(gen["reorder_s"] / n * 1e3, 3),
        }
        if gen["gen_steps"]
        else {}
    )
    return extra | {
        "cut_rows": after.get("cut_rows", 0) - before.get("cut_rows", 0),  # engine.child.device_cut
        "cut_attached": after.get("cut_attached", 0) - before.get("cut_attached", 0),  # graph rebuilds
        **followed(before, after),
        "steps": n,
        "decode_ms_per_step": round(d["decode_s"] / n * 1e3, 3),
        "sample_ms_per_step": round(d["sample_s"] / n * 1e3, 3),
        "other_ms_per_step": round((d["busy_s"] - d["decode_s"] - d["sample_s"]) / n * 1e3, 3),
        "outside_decode_pct": round(100 * (d["busy_s"] - d["decode_s"]) / d["busy_s"], 1)
        if d["busy_s"]
        else None,
    }


def traced(r: dict, steps: list[Step], streams: int) -> None:
    """A round's kvdeck steps (engine.child.step_trace) in its timeline, from its origin, and
    what they say of its steady windows (benchmarks/step_windows.py)."""
    tl = r.get("timeline")
    if not tl or not steps:
        return
    t = tl["origin"]
    windows = [(t + a, t + b) for a, b in tl["windows"]]
    r["window_steps"] = window_steps(steps, windows, streams)
    tl["steps"] = [  # launch, then llama_decode's return, the device done and sampled, from the launch
        [round(s.t0 - t, 5), *(round(x - s.t0, 5) for x in (s.t_call, s.t1, s.t_sampled)), *s[4:]]
        for s in steps
    ]


def compact_json(obj: object) -> str:
    """Indented JSON with every innermost list on one line: a round's timeline holds thousands of
    chunk times and steps, one number a line otherwise (6 MB a result file)."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def without_timelines(part: dict) -> dict:
    """A result's kvdeck or llama-server part without its rounds' timelines (for ``before``)."""
    return {
        **part,
        "rounds": [{k: v for k, v in r.items() if k != "timeline"} for r in part.get("rounds", [])],
    }


def serve_rounds(url: str, args: argparse.Namespace, trace: TraceFile | None = None) -> dict:
    stream_request(url, prompt_text(0, args.pp_words), 8, 0)  # warm-up
    rounds = []
    for c in args.client_list:
        per = max(1, args.min_requests // c)
        before = loop_stats(url)
        rounds.append(run_round(url, c, per, args.pp_words, args.tg, min(c, args.parallel)))
        share = loop_share(before, loop_stats(url))  # answered after the run wrote its trace
        if share:
            rounds[-1]["batch_loop"] = share
        if trace is not None:
            traced(rounds[-1], trace.new_steps(), min(c, args.parallel))
        print(json.dumps({k: v for k, v in rounds[-1].items() if k != "timeline"}), flush=True)
    return {"rounds": rounds, "prefix_reuse": prefix_reuse(url, args.prefix_words)}


def batched_bench(binary: Path, model: Path, args: argparse.Namespace, pp: int) -> list[dict]:
    ctx = max(args.client_list) * (pp + args.tg) + 1024
    cmd = [
        str(binary),
        "-m",
        str(model),
        "-c",
        str(ctx),
        "-b",
        "2048",
        "-ub",
        "512",
        "-ngl",
        "99",
        "-npp",
        str(pp),
        "-ntg",
        str(args.tg),
        "-npl",
        ",".join(map(str, args.client_list)),
    ]
    cmd += ["-t", str(args.threads)] if args.threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rows = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            rows.append(
                {
                    "pp": int(cells[0]),
                    "tg": int(cells[1]),
                    "b": int(cells[2]),
                    "s_pp_tps": float(cells[5]),
                    "s_tg_tps": float(cells[7]),
                    "s_tps": float(cells[9]),
                }
            )
    if not rows:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="folder with llama-server and llama-batched-bench")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--model", default="/tmp/bench-8b-q4_0.gguf")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--ctx-per-seq", type=int, default=2048)
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--min-requests", type=int, default=4, help="requests per round at least")
    ap.add_argument("--pp-words", type=int, default=14, help="~9 tokens a word in the synthetic vocabulary")
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--prefix-words", type=int, default=160)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"server-{dt.date.today()}.json"))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per program (0: its default)")
    ap.add_argument("--label", default="", help="what ran where, stored with the results (e.g. a CPU run)")
    ap.add_argument("--no-llama-server", action="store_true", help="kvdeck and llama-batched-bench only")
    ap.add_argument("--serial-sampling", action="store_true", help="also kvdeck with KVDECK_SAMPLE_THREADS=1")
    ap.add_argument("--backend-sampling", action="store_true", help="kvdeck KVDECK_BACKEND_SAMPLING=1 too")
    ap.add_argument(
        "--llama-backend-sampling", action="store_true", help="llama-server --backend-sampling too"
    )
    ap.add_argument("--before", default="", help="an earlier result file whose table is kept as 'before'")
    ap.add_argument(
        "--variants",
        default="",
        help="more kvdeck passes, NAME:VAR=VALUE[+VAR=VALUE],... (e.g. passive:OMP_WAIT_POLICY=PASSIVE)",
    )
    ap.add_argument("--kvdeck-only", action="store_true", help="no llama-server or llama-batched-bench")
    ap.add_argument(
        "--trace", action="store_true", help="kvdeck's steps in each round (KVDECK_STEP_TRACE, step_windows)"
    )
    args = ap.parse_args()
    args.client_list = [int(x) for x in args.clients.split(",")]
    bindir = Path(args.bin)
    model = Path(args.model)
    res: dict = {
        "date": dt.date.today().isoformat(),
        "shape": args.shape,
        "parallel": args.parallel,
        "ctx_per_seq": args.ctx_per_seq,
        "tg": args.tg,
        "sampling": "temperature 0.7, top_k 40",
        "label": args.label,
        "threads": args.threads,
    }
    t = time.time()
    if not model.exists():
        from benchmarks.synthetic_gguf import write_gguf

        res["model"] = write_gguf(model, args.shape)
        os.sync()  # else the kernel writes the 4 GB back while the first server is measured
    res["write_s"] = round(time.time() - t, 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ctx = args.parallel * args.ctx_per_seq

    logs = Path(args.out).parent
    logs.mkdir(parents=True, exist_ok=True)

    def server(
        cmd: list[str], url: str, extra_env: dict | None = None, log: str = "server", trace: bool = False
    ) -> dict:
        steps = TraceFile(logs / f"steps-{log}.jsonl") if trace else None
        if steps is not None:
            extra_env = {**(extra_env or {}), "KVDECK_STEP_TRACE": str(steps.path)}
        with open(logs / f"{log}.log", "w") as err:  # a pipe nobody reads would block the server
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**env, **(extra_env or {})},
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
            try:
                wait_health(url, proc)
                return serve_rounds(url, args, steps)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    port = 18431

    def kvdeck(extra_env: dict | None = None, log: str = "kvdeck") -> dict:
        cmd = [sys.executable, "-m", "kvdeck", "serve", str(model), "--port", str(port)]
        cmd += ["--parallel", str(args.parallel), "--ctx", str(ctx), "--queue", "256"]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        return server(cmd, f"http://127.0.0.1:{port}", extra_env, log, args.trace)

    res["kvdeck"] = kvdeck()
    if args.serial_sampling:
        res["kvdeck_serial_sampling"] = kvdeck({"KVDECK_SAMPLE_THREADS": "1"}, "kvdeck-serial")
    if args.backend_sampling:
        res["kvdeck_backend_sampling"] = kvdeck({"KVDECK_BACKEND_SAMPLING": "1"}, "kvdeck-backend")
    for variant in filter(None, args.variants.split(",")):
        name, _, assigns = variant.partition(":")
        extra = dict(a.split("=", 1) for a in assigns.split("+"))
        res.setdefault("variants", {})[name] = {"env": extra, **kvdeck(extra, f"kvdeck-{name}")}
    if args.kvdeck_only:
        Path(args.out).write_text(compact_json(res))
        print(f"wrote {args.out}")
        return 0
    pp = res["kvdeck"]["rounds"][0]["prompt_tokens"] or 128
    ls_cmd = [str(bindir / "llama-server"), "-m", str(model), "--port", str(port + 1)]
    ls_cmd += ["-np", str(args.parallel), "-c", str(ctx), "-ngl", "99"]
    ls_cmd += ["-t", str(args.threads)] if args.threads else []
    if args.no_llama_server:  # a table without llama-server's columns
        none = {"aggregate_tps": 0.0, "decode_tps": None, "ttft_median_s": None}
        res["llama_server"] = {"skipped": True, "rounds": [{"clients": c, **none} for c in args.client_list]}
    else:
        res["llama_server"] = server(ls_cmd, f"http://127.0.0.1:{port + 1}", log="llama-server")
    if args.llama_backend_sampling and not args.no_llama_server:
        res["llama_server_backend_sampling"] = server(
            [*ls_cmd, "--backend-sampling"], f"http://127.0.0.1:{port + 1}", log="llama-server-backend"
        )
    res["batched_bench"] = batched_bench(bindir / "llama-batched-bench", model, args, int(pp))
    table = []
    bb = {r["b"]: r for r in res["batched_bench"]}
    for k, ls, c in zip(res["kvdeck"]["rounds"], res["llama_server"]["rounds"], args.client_list):
        b_same, b_slots = bb.get(c), bb.get(min(c, args.parallel))
        table.append(
            {
                "clients": c,
                "kvdeck_tps": k["aggregate_tps"],
                "llama_server_tps": ls["aggregate_tps"],
                "vs_llama_server": round(k["aggregate_tps"] / ls["aggregate_tps"], 3)
                if ls["aggregate_tps"]
                else None,
                "kvdeck_decode_tps": k["decode_tps"],
                "llama_server_decode_tps": ls["decode_tps"],
                "batched_bench_tg_tps_same_b": b_same and b_same["s_tg_tps"],
                "batched_bench_tg_tps_b_slots": b_slots and b_slots["s_tg_tps"],
                "kvdeck_decode_vs_batched_bench_b_slots": round(k["decode_tps"] / b_slots["s_tg_tps"], 3)
                if b_slots
                else None,
                "kvdeck_steady_decode_tps": k["steady_decode_tps"],
                "llama_server_steady_decode_tps": ls.get("steady_decode_tps"),
                "kvdeck_steady_vs_batched_bench_b_slots": round(
                    k["steady_decode_tps"] / b_slots["s_tg_tps"], 3
                )
                if b_slots and k["steady_decode_tps"]
                else None,
                "ttft_median_s": {"kvdeck": k["ttft_median_s"], "llama_server": ls["ttft_median_s"]},
                "kvdeck_batch_loop": k.get("batch_loop"),
            }
        )
        for key, name in (
            ("kvdeck_serial_sampling", "serial_sampling"),
            ("kvdeck_backend_sampling", "backend_sampling"),
        ):
            other = res.get(key)
            sr = next((r for r in other["rounds"] if r["clients"] == c), None) if other else None
            if sr and b_slots:
                table[-1][name] = {
                    "kvdeck_tps": sr["aggregate_tps"],
                    "vs_llama_server": round(sr["aggregate_tps"] / ls["aggregate_tps"], 3)
                    if ls["aggregate_tps"]
                    else None,
                    "kvdeck_decode_tps": sr["decode_tps"],
                    "kvdeck_decode_vs_batched_bench_b_slots": round(
                        sr["decode_tps"] / b_slots["s_tg_tps"], 3
                    ),
                    "batch_loop": sr.get("batch_loop"),
                }
        lsb = res.get("llama_server_backend_sampling")
        lr = next((r for r in lsb["rounds"] if r["clients"] == c), None) if lsb else None
        if lr:
            table[-1]["llama_server_backend_sampling_tps"] = lr["aggregate_tps"]
    res["table"] = table
    if args.before and Path(args.before).exists():
        old = json.loads(Path(args.before).read_text())
        res["before"] = {k: old[k] for k in ("date", "table", "batched_bench") if k in old}
        res["before"].update({k: without_timelines(old[k]) for k in ("kvdeck", "llama_server") if k in old})
    print(json.dumps(table, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(compact_json(res))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
