"""Requests the child answers at once: tokenize, detokenize, stats, the RPC workers' memory.

One place for them because two loops take them off the queue: the child's main loop
(engine.child.main) and the batch loop between decode steps (engine.child.batch), so an API
server's /tokenize does not wait for every running generation to end, and the Machines dock's
poll of the workers (every few seconds) does not stop the batch from admitting new requests.
Between steps the decode has finished (the loop synchronises), so the workers' connections are
free for a memory query.
"""

from __future__ import annotations

from engine import protocol as P
from engine.child.session import LlamaSession

QUICK = (P.TokenizeRequest, P.StatsRequest, P.DetokenizeRequest, P.RemoteMemoryRequest)


def quick_answer(session: LlamaSession, msg: P.Message) -> P.Message:
    """The reply to one of :data:`QUICK`; raises RequestError (no model, bad tokens)."""
    req_id = getattr(msg, "id", 0)
    if isinstance(msg, P.TokenizeRequest):
        return P.Tokens(id=req_id, tokens=session.tokenize(msg.text, msg.add_special))
    if isinstance(msg, P.DetokenizeRequest):
        from engine.child.embed import detokenize

        return P.Detokenized(id=req_id, text=detokenize(session.require(), msg.tokens))
    if isinstance(msg, P.RemoteMemoryRequest):
        from engine.child.rpc import remote_memory

        return P.RemoteMemory(id=req_id, devices=remote_memory())
    return session.stats(req_id)
