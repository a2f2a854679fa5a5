"""Fit: the largest context, then the most GPU layers, that fit each device's budget.

Context first, like llama.cpp's own ``common_params_fit``: a user who loads a model wants it on
the GPU at a usable context before anything else. The search runs on the analytic plan (a few
milliseconds per candidate), so the GUI can show the fitted maximum on the context slider live.
The budget of a device is its free memory (or the user's budget) minus a safety margin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.core.memory_types import COMPONENTS, Device, FitResult, MemoryPlan, MiB, PlanSettings
from engine.gguf.inspect import GGUFInfo
from engine.plan.margins import DEFAULT_CPU_MARGIN, DEFAULT_GPU_MARGIN, Margins

PlanFn = Callable[[GGUFInfo, PlanSettings, list[Device]], MemoryPlan]

__all__ = [
    "DEFAULT_CPU_MARGIN",
    "DEFAULT_GPU_MARGIN",
    "DraftSpec",
    "Margins",
    "budgets_for",
    "default_settings",
    "fit",
    "pin_split",
    "preflight",
]
MIN_CONTEXT = 256
PAD = 256


@dataclass(frozen=True)
class DraftSpec:
    """A drafter to fit together with the target at the target's context: a draft ``model``
    (its own KV, its own cache types), the target's own ``mtp`` heads (``info`` is the target's),
    or a Gemma 4 ``assistant`` (no KV of its own), the last two sized by engine.plan.drafting."""

    info: GGUFInfo
    settings: PlanSettings
    kind: str = "model"  # "model" | "mtp" | "assistant"


def budgets_for(
    devices: list[Device],
    *,
    budget_bytes: int | None = None,
    margin_bytes: int | None = None,
    margins: Margins | None = None,
) -> dict[str, int]:
    """Usable bytes per device. A user budget applies to every GPU (or to the CPU without GPUs).
    Either way the runtime's own reserve (its CUDA context) comes off first: a budget is what the
    whole app may use, and llama.cpp's buffers are not all of it. Margins are per device kind
    (`margins`; a GPU margin never comes off host RAM); `margin_bytes` is one margin for every
    device, host included, and wins when given."""
    has_gpu = any(d.kind == "gpu" for d in devices)
    if margin_bytes is not None:
        margins = Margins.uniform(margin_bytes)
    margins = margins or Margins()
    out: dict[str, int] = {}
    for d in devices:
        base = d.free_bytes
        if budget_bytes is not None and (d.kind == "gpu" or not has_gpu):
            base = budget_bytes
        out[d.name] = max(0, base - margins.for_device(d) - d.reserved_bytes)
    return out


def pin_split(
    settings: PlanSettings, devices: list[Device], budgets: dict[str, int] | None = None
) -> PlanSettings:
    """With llama.cpp RPC workers, fix the layer split in the settings: each GPU-type device's
    share is its free memory (llama.cpp's own default, ``llama_model_load`` asking every device)
    or, for fit, its usable budget, so the plan, the fit and the load place layers alike even when
    a worker's free memory moves between them, and a small worker gets few layers. Unchanged
    without workers, with one device, or when the user chose a split."""
    gpus = [d for d in devices if d.kind == "gpu"]
    if settings.tensor_split or settings.split_mode == "none" or not any(d.endpoint for d in gpus):
        return settings
    amounts = [(budgets[d.name] if budgets is not None else d.free_bytes) // MiB for d in gpus]
    if len(gpus) < 2 or not any(amounts):
        return settings
    return settings.replace(tensor_split=tuple(float(a) for a in amounts))


def split_left(settings: PlanSettings, before: list[Device], after: list[Device]) -> PlanSettings:
    """The user's layer split on the devices left after some went away (a lost RPC worker):
    llama.cpp reads ``tensor_split`` in the order of the GPU-type devices, so each ratio stays
    with its own device and a lost device's goes with it; kept by position, a lost worker in the
    middle would hand its share to the device after it."""
    names = [d.name for d in before if d.kind == "gpu"]
    if not settings.tensor_split or len(settings.tensor_split) > len(names):
        return settings
    left = {d.name for d in after}
    return settings.replace(
        tensor_split=tuple(r for r, name in zip(settings.tensor_split, names) if name in left)
    )


def _combined(target: MemoryPlan, draft: MemoryPlan | None) -> dict[str, int]:
    totals: dict[str, int] = {}
    for plan in (target, draft):
        if plan is None:
            continue
        for a in plan.allocations:
            if not a.evictable:
                totals[a.device] = totals.get(a.device, 0) + a.bytes
    return totals


def _overflow(totals: dict[str, int], budgets: dict[str, int]) -> str | None:
    """The first device over its budget, or None. Devices without a budget are unlimited."""
    worst, worst_by = None, 0
    for dev, used in totals.items():
        if dev in budgets and used - budgets[dev] > worst_by:
            worst, worst_by = dev, used - budgets[dev]
    return worst


class _Search:
    def __init__(
        self,
        info: GGUFInfo,
        base: PlanSettings,
        devices: list[Device],
        budgets: dict[str, int],
        draft: DraftSpec | None,
        plan_fn: PlanFn,
    ) -> None:
        self.info, self.base, self.devices = info, base, devices
        self.budgets, self.draft, self.plan_fn = budgets, draft, plan_fn

    def plans(self, n_ctx: int, ngl: int) -> tuple[MemoryPlan, MemoryPlan | None]:
        s = self.base.replace(n_ctx=n_ctx, n_gpu_layers=ngl)
        target = self.plan_fn(self.info, s, self.devices)
        draft = None
        if self.draft is not None and self.draft.kind != "model":
            from engine.plan.drafting import drafting_plan

            assistant = self.draft.info if self.draft.kind == "assistant" else None
            draft = drafting_plan(self.info, target, self.devices, assistant, ngl)
        elif self.draft is not None:
            # the draft gets the target's *resolved* context, never its own training default
            ds = self.draft.settings.replace(
                n_ctx=target.n_ctx,
                n_seq_max=s.n_seq_max,
                kv_unified=s.kv_unified,
                n_batch=s.n_batch,
                n_ubatch=s.n_ubatch,
            )
            draft = self.plan_fn(self.draft.info, ds, self.devices)
        return target, draft

    def over(self, n_ctx: int, ngl: int) -> str | None:
        return _overflow(_combined(*self.plans(n_ctx, ngl)), self.budgets)

    def max_context(self, ngl: int, lo: int, hi: int) -> int | None:
        """Largest multiple of PAD in [lo, hi] that fits, assuming memory grows with context."""
        lo, hi = max(PAD, lo // PAD * PAD), max(PAD, hi // PAD * PAD)
        if self.over(lo, ngl) is not None:
            return None
        if self.over(hi, ngl) is None:
            return hi
        while hi - lo > PAD:
            mid = (lo + hi) // 2 // PAD * PAD
            if self.over(mid, ngl) is None:
                lo = mid
            else:
                hi = mid
        return lo


def _machine(devices: list[Device], name: str) -> str:
    """A device in words, naming the machine when it is a worker's."""
    where = next((d.endpoint for d in devices if d.name == name and d.endpoint), "")
    return f"{name} on the worker at {where}" if where else name


def _limit_reason(search: _Search, n_ctx: int, ngl: int, n_ctx_train: int) -> tuple[str, str]:
    if n_ctx >= n_ctx_train:
        return "training context", f"the model's training context ({n_ctx_train} tokens) is the limit"
    t1, d1 = search.plans(n_ctx + PAD, ngl)
    totals = _combined(t1, d1)
    dev = _overflow(totals, search.budgets) or "CPU"
    t0, d0 = search.plans(n_ctx, ngl)
    growth = {
        c: t1.bytes_for(dev, c)
        - t0.bytes_for(dev, c)
        + ((d1.bytes_for(dev, c) - d0.bytes_for(dev, c)) if d1 and d0 else 0)
        for c in COMPONENTS
        if c != "driver"  # it follows the other buffers' 2 MiB rounding: never the cause
    }
    comp = max(growth, key=lambda c: growth[c])
    biggest = max(COMPONENTS, key=lambda c: t0.bytes_for(dev, c))
    return (
        f"{dev} {comp}",
        f"{_machine(search.devices, dev)} is full: {search.budgets.get(dev, 0) // MiB} MiB usable, "
        f"{biggest} is the largest part and {comp} grows with the context",
    )


def _experts_to_cpu(search: _Search, info: GGUFInfo, ngl: int, floor: int) -> int | None:
    """For a MoE model whose ``floor`` context does not fit with ``ngl`` layers, the fewest
    leading layers whose routed experts must stay in host memory (``--n-cpu-moe``) for it to
    fit, set on ``search.base``; all of them when even that is not enough (the layer search
    then drops whole layers). llama-fit-params (common/fit.cpp) likewise moves experts to the
    CPU (``LAYER_FRACTION_MOE`` overrides) before it gives up whole layers. None: not MoE."""
    base, n = search.base, info.n_layer
    if not info.n_expert or base.n_cpu_moe >= n:
        return None

    def fits(k: int) -> bool:
        search.base = base.replace(n_cpu_moe=k)
        return search.max_context(ngl, floor, floor) is not None

    if not fits(n):
        return n
    lo, hi = base.n_cpu_moe, n  # lo does not fit (the caller tried it), hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    search.base = base.replace(n_cpu_moe=hi)
    return hi


def _experts_words(n_cpu_moe: int, n_layer: int) -> str:
    from engine.plan.cpu_moe import layer_span

    return f"experts of {layer_span(range(min(n_cpu_moe, n_layer)))} on the CPU"


def fit(
    info: GGUFInfo,
    settings: PlanSettings,
    devices: list[Device],
    *,
    plan_fn: PlanFn,
    budget_bytes: int | None = None,
    margin_bytes: int | None = None,
    margins: Margins | None = None,
    draft: DraftSpec | None = None,
    min_context: int = 4096,
    max_context: int | None = None,
) -> FitResult:
    """Largest context (up to the training context), then the most GPU layers, within budget
    (margins as in `budgets_for`)."""
    budgets = budgets_for(devices, budget_bytes=budget_bytes, margin_bytes=margin_bytes, margins=margins)
    settings = pin_split(settings, devices, budgets)
    search = _Search(info, settings, devices, budgets, draft, plan_fn)
    n_train = max(MIN_CONTEXT, info.n_ctx_train or 4096)
    hi = min(n_train, max_context) if max_context else n_train
    floor = min(min_context, hi)
    has_gpu = any(d.kind == "gpu" for d in devices)
    n_layers_all = info.n_layer + 1
    ngl = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else n_layers_all
    if not has_gpu:
        ngl = 0
    n_ctx = search.max_context(ngl, floor, hi)
    moved = _experts_to_cpu(search, info, ngl, floor) if n_ctx is None and has_gpu and ngl else None
    if moved is not None:
        n_ctx = search.max_context(ngl, floor, hi)
    if n_ctx is None and has_gpu:
        # the minimum context does not fit with these layers on the GPU: find the most layers that do
        lo_l, hi_l = 0, ngl
        if search.max_context(0, floor, floor) is not None:
            while hi_l - lo_l > 1:
                mid = (lo_l + hi_l) // 2
                if search.max_context(mid, floor, floor) is not None:
                    lo_l = mid
                else:
                    hi_l = mid
            ngl = lo_l
            n_ctx = search.max_context(ngl, floor, hi)
    if n_ctx is None:
        n_ctx = search.max_context(ngl, MIN_CONTEXT, floor)
    if n_ctx is None:
        target, dplan = search.plans(MIN_CONTEXT, ngl)
        dev = _overflow(_combined(target, dplan), budgets) or "CPU"
        need = _combined(target, dplan).get(dev, 0)
        return FitResult(
            search.base.replace(n_ctx=MIN_CONTEXT, n_gpu_layers=ngl),
            target,
            budgets,
            limited_by=f"{dev} weights",
            fits=False,
            reason=(
                f"does not fit: even {MIN_CONTEXT} tokens need {need // MiB} MiB on "
                f"{_machine(devices, dev)}, "
                f"{budgets.get(dev, 0) // MiB} MiB usable"
            ),
            extra={"draft_plan": dplan},
        )
    target, dplan = search.plans(n_ctx, ngl)
    limited_by, reason = _limit_reason(search, n_ctx, ngl, n_train if not max_context else hi)
    extra: dict[str, object] = {"draft_plan": dplan}
    full = search.over(n_ctx, ngl + 1) if has_gpu and ngl < n_layers_all else None
    if full is not None:  # fewer layers than the model has: say which device took no more
        extra["layers_limited_by"] = full
        reason += f"; {ngl} of {n_layers_all} layers offloaded, as one more would overfill {_machine(devices, full)}"
    if search.base.n_cpu_moe > settings.n_cpu_moe:
        extra["n_cpu_moe"] = search.base.n_cpu_moe
        reason += f"; {_experts_words(search.base.n_cpu_moe, info.n_layer)} to keep the layers on the GPU"
    chosen = search.base.replace(n_ctx=n_ctx, n_gpu_layers=ngl)
    return FitResult(chosen, target, budgets, limited_by=limited_by, reason=reason, fits=True, extra=extra)


DEFAULT_MAX_CONTEXT = 16384


def default_settings(
    info: GGUFInfo,
    devices: list[Device],
    *,
    plan_fn: PlanFn,
    base: PlanSettings | None = None,
    margins: Margins | None = None,
    draft: DraftSpec | None = None,
) -> tuple[PlanSettings, FitResult]:
    """First-load settings: cache types matched to the weights, the fitted context (capped so a
    128k-context model does not reserve gigabytes the user never asked for) and fitted GPU layers,
    next to ``draft`` when one is chosen."""
    from engine.plan.rules import default_cache_type

    kv = default_cache_type(info)
    start = (base or PlanSettings()).replace(type_k=kv, type_v=kv, n_ctx=0)
    cap = min(info.n_ctx_train or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
    result = fit(
        info,
        start,
        devices,
        plan_fn=plan_fn,
        max_context=cap,
        min_context=min(4096, cap),
        margins=margins,
        draft=draft,
    )
    chosen = result.settings if result.fits else start.replace(n_ctx=min(4096, cap))
    return chosen, result


def _reserve_words(d: Device) -> str:
    return (
        f", of which the runtime itself needs {d.reserved_bytes / MiB:,.0f} MiB" if d.reserved_bytes else ""
    )


def preflight(
    info: GGUFInfo,
    settings: PlanSettings,
    devices: list[Device],
    backend: str,
    *,
    plan_fn: PlanFn,
    margin_bytes: int = 256 * MiB,
    margins: Margins | None = None,
) -> MemoryPlan:
    """Refuse, in one sentence, settings llama.cpp would reject or that cannot fit, before loading.

    The margin is smaller than fit's (a user who chose settings explicitly gets the benefit of
    the doubt): `margin_bytes` on every device, unless `margins` gives one per kind or device.

    Loading is where a bad file or an absurd context turns into a multi-gigabyte allocation or an
    abort; everything that can be known from the metadata is checked here first.
    """
    from engine.core.errors import KvDeckError
    from engine.plan.rules import check_settings

    n_gpus = sum(1 for d in devices if d.kind == "gpu")
    errors = [p for p in check_settings(info, settings, n_gpus, backend) if p.severity == "error"]
    if errors:
        raise KvDeckError(errors[0].message)
    plan = plan_fn(info, settings, devices)
    margins = margins or Margins.uniform(margin_bytes)
    for d in devices:
        need = plan.resident_bytes_for(d.name)
        if need > max(0, d.free_bytes - margins.for_device(d) - d.reserved_bytes):
            biggest = max(COMPONENTS, key=lambda c: plan.bytes_for(d.name, c))
            raise KvDeckError(
                f"this needs {need / MiB:,.0f} MiB on {d.name} but only {d.free_bytes / MiB:,.0f} MiB "
                f"is free{_reserve_words(d)} ({biggest} alone is {plan.bytes_for(d.name, biggest) / MiB:,.0f} MiB); "
                f"lower the context or use a smaller cache type"
            )
    return plan
