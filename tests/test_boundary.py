"""The runtime boundary: typed errors across it, and what is planned is what is loaded.

Every refusal of the child has one kind; the parent raises exactly one exception class for it
and the API server answers exactly one HTTP status. The load message carries the plan's own
``PlanSettings``, so the context the analytic plan sizes is the one the child creates, also for
``n_ctx = 0`` (the training context, in both places).
"""

from __future__ import annotations

import pytest

from engine import protocol as P
from engine.core.errors import ContextFull, InvalidSettings, KvDeckError, NotReady
from engine.core.memory_types import Device, GiB, PlanSettings
from engine.gguf.inspect import inspect_gguf
from engine.plan.analytic import analytic_plan
from engine.protocol.errors import EXCEPTIONS, ErrorKind, exception_for, kind_for
from engine.serve.server import REFUSALS, _refusal
from tests.helpers.gguf_factory import write_llama
from tests.helpers.runtime_host import running_host

CPU = [Device("CPU", "cpu", 64 * GiB, 64 * GiB)]


def test_each_kind_is_one_exception_class_and_one_http_answer():
    classes = [EXCEPTIONS[k] for k in ErrorKind]
    assert len(set(classes)) == len(ErrorKind)  # one class per kind, none shared
    for kind in ErrorKind:
        exc = exception_for(kind.value, "why")
        assert type(exc) is EXCEPTIONS[kind] and str(exc) == "why" and isinstance(exc, KvDeckError)
        assert kind_for(exc) is kind  # the child types a KvDeckError by the same table
        status, *_ = REFUSALS[kind]
        assert _refusal(P.ErrorEvent(id=1, kind=kind.value, message="why")).status == status
    assert set(REFUSALS) == set(ErrorKind)
    ctx = _refusal(P.ErrorEvent(id=1, kind="context", message="too long"))
    assert (ctx.status, ctx.code) == (400, "context_length_exceeded")
    assert _refusal(P.ErrorEvent(id=1, kind="params", message="no")).status == 400
    assert _refusal(P.ErrorEvent(id=1, kind="cancelled", message="")).status == 503
    assert _refusal(P.ErrorEvent(id=1, kind="runtime", message="bug")).status == 500
    assert type(exception_for("from-a-newer-child", "x")) is EXCEPTIONS[ErrorKind.RUNTIME]


@pytest.mark.slow
def test_refusals_arrive_typed_through_the_real_child(smollm2_path):
    with running_host() as (host, _):
        with pytest.raises(NotReady, match="no model is loaded"):
            host.tokenize("hello")
        host.load(P.LoadParams(path=str(smollm2_path), settings=PlanSettings(n_ctx=256)))
        # past the parent's own validation: the child refuses the raw value itself
        with pytest.raises(InvalidSettings, match="top-p"):
            host.call(
                "generate",
                lambda i: P.GenerateRequest(id=i, prompt="Hi", max_tokens=2, sampling={"top_p": 5.0}),
                timeout=60,
            )
        with pytest.raises(InvalidSettings, match="temperature"):
            host.call(
                "generate",
                lambda i: P.GenerateRequest(
                    id=i, prompt="Hi", max_tokens=2, serve=True, sampling={"temperature": 99}
                ),
                timeout=60,
            )
        with pytest.raises(ContextFull, match="context"):
            host.generate("hello " * 400, max_tokens=4)
        assert host.generate("Hello", max_tokens=2).tokens  # the child lives on


@pytest.mark.slow
def test_the_planned_context_is_the_loaded_context(tmp_path, smollm2_path):
    small = write_llama(tmp_path / "small-ctx.gguf", context_length=1024)
    cases = [
        (small, PlanSettings(n_ctx=0)),  # the training context, not min(train, 4096)
        (small, PlanSettings(n_ctx=300)),
        (small, PlanSettings(n_ctx=1000, n_seq_max=3)),
        (small, PlanSettings(n_ctx=1000, n_seq_max=3, kv_unified=True)),
        (smollm2_path, PlanSettings(n_ctx=700, n_batch=256, n_ubatch=64, type_k="q8_0", flash_attn="on")),
    ]
    with running_host() as (host, _):
        for path, settings in cases:
            plan = analytic_plan(inspect_gguf(path), settings, CPU)
            loaded = host.load(P.LoadParams(str(path), settings, n_threads=1))
            assert (loaded.n_ctx, loaded.n_ctx_seq) == (plan.n_ctx, plan.n_ctx_seq), settings
        assert loaded.n_ctx != 0
    info = inspect_gguf(small)
    assert info.n_ctx_train == 1024 and analytic_plan(info, PlanSettings(n_ctx=0), CPU).n_ctx == 1024


def test_load_params_cross_the_wire_as_plan_settings():
    s = PlanSettings(n_ctx=0, n_seq_max=2, type_k="q8_0", tensor_split=(0.25, 0.75))
    p = P.LoadParams("/m.gguf", s, n_threads=3, dry_run=True)
    wire = P.decode(P.encode(P.LoadRequest(id=7, params=p.to_dict())))
    assert P.LoadParams.from_dict(wire.params) == p  # type: ignore[attr-defined]
