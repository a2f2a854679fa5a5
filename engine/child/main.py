"""The runtime child's main loop (started as ``python -m engine.child``).

The parent writes requests to our stdin and reads events from the protocol pipe (our original
stdout). Native code may print anything to fd 1, so fd 1 is pointed at stderr before llama.cpp
loads and the protocol keeps a private duplicate. A reader thread takes requests off stdin so a
cancel reaches a running generation at once; everything that touches llama.cpp runs on the main
thread, because nothing in llama.cpp is safe against a concurrent decode.
"""

from __future__ import annotations

import os
import sys
from functools import partial

from engine import protocol as P
from engine.child.io import EventWriter, Requests


def main() -> int:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    emit = EventWriter(proto)

    import logging

    from engine.child.native_log import NativeLog, install_abort_hook

    log = NativeLog(lambda level, text: emit(P.LogEvent(level=level, text=text)))
    abort_hook = install_abort_hook()  # noqa: F841  (must stay referenced)

    import llama_cpp
    import llama_cpp.llama_cpp as LL

    from engine.child.errors import RequestError, error_event
    from engine.child.quick import QUICK, quick_answer
    from engine.child.session import LlamaSession
    from engine.core.errors import KvDeckError

    workers = [e for e in os.environ.get("KVDECK_RPC", "").split(",") if e]
    if workers:  # llama.cpp RPC workers, probed by the parent (engine.runtime.workers)
        from engine.child.rpc import add_servers

        add_servers(workers)
    session = LlamaSession(emit, log)
    emit(
        P.Hello(
            pid=os.getpid(),
            llama_cpp_python=llama_cpp.__version__,
            gpu_offload=bool(LL.llama_supports_gpu_offload()),
            system_info=LL.llama_print_system_info().decode("utf-8", "replace"),
        )
    )
    requests = Requests(sys.stdin.buffer)
    while True:
        msg = requests.next()
        if msg is None or isinstance(msg, P.ShutdownRequest):
            break
        req_id = getattr(msg, "id", 0)
        try:
            if isinstance(msg, P.LoadRequest):
                params = P.LoadParams.from_dict(msg.params)
                then = None
                if params.dry_run and params.draft:  # size an assistant's context next to it
                    from engine.child.assistant import dry_run_assistant

                    then = partial(dry_run_assistant, path=params.draft)
                emit(session.load(req_id, params, requests.cancel_event(req_id), then))
            elif isinstance(msg, P.GenerateRequest):
                from engine.child.batch import run_batch
                from engine.child.batch_intake import batch_wanted

                if batch_wanted(session, msg):  # parallel sequences: continuous batching
                    run_batch(session, msg, requests, emit)
                elif msg.draft:  # speculative decoding
                    from engine.child.speculative import generate_speculative

                    emit(generate_speculative(session, msg, requests.cancel_event(req_id)))
                else:
                    from engine.child.decode import generate

                    emit(generate(session, msg, requests.cancel_event(req_id)))
            elif isinstance(msg, QUICK):
                emit(quick_answer(session, msg))
            elif isinstance(msg, P.EmbedRequest):
                from engine.child.embed import embed

                emit(embed(session.require(), msg))
            elif isinstance(msg, P.BenchRequest):
                from engine.child.bench import run_bench

                emit(run_bench(session, msg, requests.cancel_event(req_id)))
            elif isinstance(msg, P.UnloadRequest):
                session.unload()
                emit(P.Unloaded(id=req_id))
            elif isinstance(msg, P.PairRequest):
                from engine.child.vocab import pair_checks

                emit(P.PairReply(id=req_id, checks=[vars(c) for c in pair_checks(msg.target, msg.draft)]))
            elif isinstance(msg, P.PrecisionRequest):
                from engine.child.precision import run_precision

                emit(run_precision(session, msg, emit, requests.cancel_event(req_id)))
            elif isinstance(msg, P.LoadDraftRequest):
                from engine.child.speculative import load_draft

                emit(load_draft(session, msg, requests.cancel_event(req_id)))
            elif isinstance(msg, P.UnloadDraftRequest):
                from engine.child.speculative import unload_draft

                unload_draft(session)
                emit(P.DraftUnloaded(id=req_id))
        except KvDeckError as exc:  # refused settings (SamplingParams), typed by class
            emit(error_event(req_id, exc))
        except Exception as exc:  # RequestError carries its kind; anything else is a bug
            if not isinstance(exc, RequestError):
                logging.getLogger(__name__).exception("request failed")
            emit(error_event(req_id, exc))
        finally:
            requests.finished(req_id)
    session.unload()
    return 0
