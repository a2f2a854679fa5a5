"""The memory verdict on a model before it is downloaded: will it fit this machine, and how?

It is `kvdeck fit` with its defaults (cache type matched to the weights, all layers on the
GPU if they fit, the largest context up to the training context), run on the header read
remotely and on this machine's devices (`plan_devices`), so the verdict on a Hub file equals
what `kvdeck fit` says once it is on disk. The text is what a user choosing between
quantizations needs: where it runs, at what context, and what it would take if it does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from engine.core.errors import KvDeckError
from engine.core.memory_types import Device, MiB, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.hub.names import RemoteModel
from engine.hub.remote import ReadStats, remote_info

GiB = 1024 * MiB


@dataclass(frozen=True)
class Verdict:
    """How a model fits this machine (`fit` with `kvdeck fit`'s defaults)."""

    fits: bool
    where: str  # "gpu" (all layers), "split" (some layers), "cpu" (RAM only), "none"
    n_ctx: int
    n_gpu_layers: int
    n_layers: int  # offloadable layers: the blocks plus the output layer
    type_k: str
    type_v: str
    need_bytes: int  # the plan's total over all devices
    limited_by: str
    reason: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ctx_words(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else f"{n:,}"


def _kv_words(s: PlanSettings) -> str:
    return f"{s.type_k} K/V" if s.type_k == s.type_v else f"{s.type_k} K and {s.type_v} V"


def verdict(
    info: GGUFInfo,
    devices: list[Device] | None = None,
    *,
    max_context: int | None = None,
    budget_bytes: int | None = None,
) -> Verdict:
    """`kvdeck fit`'s answer for `info` on `devices` (default: this machine's)."""
    from engine.core.build import gpu_backend
    from engine.plan.analytic import analytic_plan
    from engine.plan.fit import fit
    from engine.plan.rules import check_settings, default_cache_type
    from engine.runtime.info import plan_devices

    if devices is None:
        devices = plan_devices()[0]
    kv = default_cache_type(info)
    settings = PlanSettings(n_ctx=4096, n_gpu_layers=-1, type_k=kv, type_v=kv)
    n_layers = info.n_layer + 1
    n_gpus = sum(1 for d in devices if d.kind == "gpu")
    errors = [p for p in check_settings(info, settings, n_gpus, gpu_backend()) if p.severity == "error"]
    if errors:
        return Verdict(
            False,
            "none",
            0,
            0,
            n_layers,
            kv,
            kv,
            0,
            "settings",
            errors[0].message,
            f"cannot run: {errors[0].message}",
        )
    result = fit(
        info, settings, devices, plan_fn=analytic_plan, budget_bytes=budget_bytes, max_context=max_context
    )
    s, need = result.settings, result.plan.bytes_for()
    ngl = min(s.n_gpu_layers, n_layers) if n_gpus else 0
    if not result.fits:
        why = result.reason.removeprefix("does not fit: ")  # fit's sentence starts the same way
        where, text = "none", f"does not fit: needs {need / GiB:.1f} GiB ({why})"
    elif n_gpus and ngl >= n_layers:
        where = "gpu"
        text = f"fits fully on GPU at {ctx_words(s.n_ctx)} context with {_kv_words(s)}"
    elif n_gpus and ngl > 0:
        where = "split"
        text = (
            f"fits with {ngl} of {n_layers} layers on GPU at {ctx_words(s.n_ctx)} context with {_kv_words(s)}"
        )
    else:
        where = "cpu"
        text = (
            f"fits in RAM{'' if n_gpus else ' (no usable GPU)'} at "
            f"{ctx_words(s.n_ctx)} context with {_kv_words(s)}"
        )
    return Verdict(
        result.fits,
        where,
        s.n_ctx,
        ngl,
        n_layers,
        s.type_k,
        s.type_v,
        need,
        result.limited_by,
        result.reason,
        text,
    )


@dataclass(frozen=True)
class Candidate:
    """A model of a listing with its verdict (or the sentence saying why there is none)."""

    model: RemoteModel
    verdict: Verdict | None
    error: str | None
    bytes_read: int  # fetched for this verdict (0 when the header was cached)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            **self.model.to_json(),
            "verdict": self.verdict.to_json() if self.verdict else None,
            "error": self.error,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 4),
        }


_RANK = {"gpu": 0, "split": 1, "cpu": 2, "none": 3}


def sort_key(c: Candidate) -> tuple[Any, ...]:
    """Best fit first: all on GPU, then most layers on GPU, then RAM only, then no fit; within
    a class the larger file first (more bits per weight, the better model that still fits),
    then the larger context. Companions and files without a verdict go last."""
    v = c.verdict
    if v is None or c.model.role != "model":
        return (5 if v is None else 4, c.model.name)
    frac = v.n_gpu_layers / max(1, v.n_layers)
    return (_RANK[v.where], -round(frac, 2), -(c.model.size or 0), -v.n_ctx, c.model.name)


def judge_one(
    model: RemoteModel, revision: str = "main", devices: list[Device] | None = None, **fit_options: Any
) -> Candidate:
    """Verdict on one remote model; failures become the candidate's `error`, not exceptions."""
    start, stats = time.perf_counter(), ReadStats()
    try:
        info = remote_info(model, revision, stats)
        v, err = verdict(info, devices, **fit_options), None
    except KvDeckError as exc:
        v, err = None, str(exc)
    return Candidate(model, v, err, stats.bytes_read, time.perf_counter() - start)


def judge(
    models: list[RemoteModel],
    revision: str = "main",
    devices: list[Device] | None = None,
    *,
    workers: int = 4,
    on_result: Callable[[Candidate], None] | None = None,
    **fit_options: Any,
) -> list[Candidate]:
    """Verdicts on `models` (a few headers at a time), sorted best fit first.

    `on_result` sees each candidate as it is judged (a GUI fills its list as they come).
    Vision projectors are listed without a verdict: they are not models on their own."""
    if devices is None:
        from engine.runtime.info import plan_devices

        devices = plan_devices()[0]

    def one(m: RemoteModel) -> Candidate:
        if m.role == "mmproj":
            c = Candidate(m, None, "vision projector: goes with a model", 0, 0.0)
        else:
            c = judge_one(m, revision, devices, **fit_options)
        if on_result is not None:
            on_result(c)
        return c

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        out = list(pool.map(one, models))
    return sorted(out, key=sort_key)
