"""Compute buffers when CPU-backed llama.cpp RPC workers hold layers (a bound that never falls short).

An RPC device is a non-host GPU-type backend to the scheduler (ggml-rpc.cpp: device type GPU,
`supports_op` true for every op, no `offload_op`, async and events in its caps), so
`ggml_backend_sched_split_graph` (ggml-backend.cpp) gives each device holding layers its own
splits and compute buffer, and copies into it every tensor its nodes read from another backend:
the graph inputs (which stay on the host: positions, KQ masks, K/V row indices, the output ids
with the last layer, the rotation matrices of a quantized cache) and the hidden row handed over
from the previous device (the host's `get_rows` of token_embd for the first one). Two things
make these buffers larger than one local device's:

* Pipeline parallelism. llama_context enables it when the model has more than one device,
  every layer and the output are offloaded, the split mode is "layer" and K/V are offloaded
  (llama-context.cpp, `pipeline_parallel`); the scheduler then keeps
  `GGML_SCHED_MAX_COPIES` (4) copies of every split input, flagged input and output so that
  ggml-alloc never frees or reuses them, and four copies of every graph input on the host
  (pass 6, including the unused `inp_embd` leaf).
* The activations then sit above those copies: the layer phases of engine.plan.compute
  without the mask (counted with the inputs), and on the output device the larger of the
  logits and that phase, past the last layer's rows (1 to 5 rows on the loopback dry runs
  with SmolLM2, up to 3 with the synthetic 2-layer families; 6 here).

Checked against llama.cpp's dry run on one and two loopback CPU workers (SmolLM2-135M and
the synthetic llama, gemma2/3, qwen3moe, gpt-oss and mamba families; f16 and q8_0 K/V, flash
attention on and off, ubatch 256-512, ctx 1k-4k, 1-2 sequences, full and partial offload; see
tests/test_rpc_compute.py): the host buffer is exact with pipeline parallelism and the worker
buffers are up to 6 MiB over (31 MiB for a worker holding only SWA layers: the full-context
mask is counted on every device), never under. Without pipeline parallelism the inputs are ordinary
tensors and the sum of inputs and phases is an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.core.memory_types import Device, MiB, PlanSettings
from engine.plan import compute_cuda as cc
from engine.plan.compute import phases

if TYPE_CHECKING:
    from engine.plan.context import Resolved
    from engine.plan.kv_sizes import ModelGeometry

#: ggml-backend.cpp `GGML_SCHED_MAX_COPIES`: split-input copies kept with pipeline parallelism.
SCHED_MAX_COPIES = 4
#: Hidden rows past the last layer on the output device (5 measured, one as a hedge).
OUTPUT_ROWS = 6


def pipeline_parallel(settings: PlanSettings, n_layer: int, gpus: Sequence[Device]) -> bool:
    """llama-context.cpp's condition (every non-CPU device here has async and events)."""
    ngl = settings.n_gpu_layers
    return (
        len(gpus) > 1
        and (ngl < 0 or ngl > n_layer)
        and settings.split_mode == "layer"
        and settings.offload_kqv
    )


def rpc_compute(
    geo: ModelGeometry,
    r: Resolved,
    fa_on: bool,
    n_swa_cells: int,
    kv_unified: bool,
    types: tuple[str, str],
    ldev: list[str],
    copies: int,
) -> list[tuple[str, int, str]]:
    """[(device, bytes, detail)] for the host and every worker device holding layers
    (ldev: device per layer, the last entry the output layer)."""
    shape = geo.compute
    kvl = geo.kv_layers
    cm = cc.CudaModel(
        k_width=max((geo.k_width[il] for il in kvl), default=0),
        v_width=max((geo.v_width[il] for il in kvl), default=0),
        head_dim=max((geo.head_k[il] for il in kvl), default=0),
        max_layer_matrix=(),
        output_matrix=0,
    )
    g = cc.CudaGraph(shape, cm, r, fa_on, n_swa_cells, types)
    quant = any(g.quant)
    t = g.tokens
    row = 4 * t * shape.n_embd
    # the graph inputs on the host: inp_embd leaf + get_rows result, tokens, positions, masks,
    # indices, output ids (engine.plan.compute_cuda.host_bytes, exact for a CUDA host buffer)
    host_inputs = cc.host_bytes(g)
    # what a worker copies in besides the hidden rows: positions, masks, indices, rotations
    shared = host_inputs - 2 * row - 4 * t * 2 - 4 * min(t, r.n_outputs_max)
    ph = phases(shape, r, fa_on, n_swa_cells, kv_unified, quant)
    mask = g.masks() if shape.q_width else 0
    layer_ph = {k: max(0, v - mask) for k, v in ph.items() if k != "output"}
    name, act = max(layer_ph.items(), key=lambda kv: kv[1], default=("layers", 0))
    logits = 4 * min(t, r.n_outputs_max) * shape.n_vocab
    res: list[tuple[str, int, str]] = []
    first = True
    last_layer_dev = ldev[-2] if len(ldev) > 1 else ldev[-1]
    for dev in dict.fromkeys(ldev):
        if dev == "CPU":
            continue
        # the hidden row(s) from the previous device: one with every layer offloaded (the
        # layer's norm is pinned to its device), else the norm and the residual
        rows_in = 1 if copies > 1 or first else 2
        first = False
        inp = rows_in * row + shared + (4 * min(t, r.n_outputs_max) if dev == last_layer_dev else 0)
        b = copies * inp + act
        detail = (
            f"RPC worker: {copies} × {inp / MiB:.2f} MiB of copied inputs"
            + (" (pipeline parallelism)" if copies > 1 else "")
            + f" + the {name} phase {act / MiB:.2f} MiB"
        )
        if dev == ldev[-1]:
            # the logits (or, with a small vocabulary, the last layer's phase) and the rows
            # left above them: with one copy the inputs are freed by then, yet the logits
            # still landed 1-5 rows up (5 with a quantized cache at ubatch 256)
            if copies > 1:
                b = copies * inp + max(act, logits) + OUTPUT_ROWS * row
            else:
                b = max(b, logits + OUTPUT_ROWS * row)
            detail += f"; output: logits {logits / MiB:.2f} MiB + {OUTPUT_ROWS} rows"
        res.append((dev, b, detail + f" for a {t}-token ubatch"))
    if copies > 1:
        host = copies * (host_inputs - row) + row
        host_detail = f"graph inputs × {copies} (pipeline parallelism) + the token embedding rows"
    else:
        host = host_inputs
        host_detail = "graph inputs (token embeddings, KQ masks, indices)"
    if "CPU" in ldev[:-1] or ldev[-1] == "CPU":
        cpu_ph = {k: v for k, v in ph.items() if k != "output" or ldev[-1] == "CPU"}
        host = max(host, max(cpu_ph.values()) + row)  # the CPU calibration + its one-row hedge
        host_detail = "the host's layers: CPU calibration + one row (fragmentation)"
    res.append(("CPU", host, host_detail))
    return res
