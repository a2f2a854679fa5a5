"""Finished runtime replies → OpenAI responses and server-sent events (choices, tool calls, logprobs).

Tool calls while streaming: a choice whose text could still be a tool call (engine.serve.tools
``may_be_call``: it starts with ``{``, ``[``, a fence or a call marker) is held back until either
it clearly is not one (then it streams on as content) or the reply ends; a call is then sent as
OpenAI does: a delta with ``tool_calls`` (index, id, type, function name and arguments) and a
final chunk with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from engine import protocol as P
from engine.serve.calls import Call, refusal_of, sse
from engine.serve.openai_api import ApiError, Job
from engine.serve.shapes import FINISH, choice, chunk, new_id, response, usage
from engine.serve.tools import may_be_call, parse_calls


def _finish(job: Job, done: P.Done) -> tuple[str, str, list[dict[str, Any]] | None]:
    """(content, finish_reason, tool calls) of one finished choice."""
    finish = FINISH.get(done.stop_reason, "stop")
    if job.tools is None:
        return done.text, finish, None
    content, calls = parse_calls(done.text, job.tools.names)
    return (content, "tool_calls", calls) if calls else (done.text, finish, None)


def full_response(job: Job, name: str, results: list[P.Done]) -> dict[str, Any]:
    choices = []
    for i, done in enumerate(results):
        text, finish, calls = _finish(job, done)
        choices.append(choice(job, i, text, finish, done.logprobs, calls))
    return response(
        job,
        new_id(job.kind),
        name,
        choices,
        results[0].n_prompt,
        sum(len(d.tokens) for d in results),
        min(d.n_reused for d in results),
        results,
    )


async def stream_events(
    job: Job, call: Call, name: str, early: list[P.Message], done: Callable[[], None]
) -> AsyncIterator[str]:
    rid = new_id(job.kind)
    n = job.n
    holding = [job.tools is not None] * n
    held = [""] * n
    held_lp: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    ended: set[int] = set()
    dones: list[P.Done] = []
    n_prompt = n_completion = n_cached = 0
    so_far = [0] * n  # tokens per choice so far, for timings_per_token
    try:
        if job.kind == "chat":
            for i in range(n):
                yield sse(chunk(job, rid, name, "", first=True, index=i, n_so_far=so_far[i]))
        while len(ended) < n:
            msg = early.pop(0) if early else await call.next()
            if isinstance(msg, P.ErrorEvent):
                yield sse(refusal_of(msg).body())
                break
            if not isinstance(msg, (P.Delta, P.Done)):
                continue
            i = call.index(msg)
            if isinstance(msg, P.Delta):
                so_far[i] += len(msg.tokens)
                if holding[i]:
                    held[i] += msg.text
                    held_lp[i] += msg.logprobs
                    if may_be_call(held[i]):
                        continue
                    text, entries, holding[i], held[i], held_lp[i] = held[i], held_lp[i], False, "", []
                else:
                    text, entries = msg.text, msg.logprobs
                if text or entries:
                    yield sse(chunk(job, rid, name, text, index=i, entries=entries, n_so_far=so_far[i]))
                continue
            ended.add(i)
            dones.append(msg)
            so_far[i] = len(msg.tokens)
            n_prompt, n_completion, n_cached = msg.n_prompt, n_completion + len(msg.tokens), msg.n_reused
            finish = FINISH.get(msg.stop_reason, "stop")
            if holding[i]:
                content, finish, calls = _finish(job, msg)
                if calls:
                    yield sse(
                        chunk(job, rid, name, content or None, index=i, tool_calls=calls, n_so_far=so_far[i])
                    )
                elif content or held_lp[i]:
                    yield sse(chunk(job, rid, name, content, index=i, entries=held_lp[i], n_so_far=so_far[i]))
            yield sse(chunk(job, rid, name, None, finish, index=i, n_so_far=so_far[i]))
        else:
            if job.include_usage:
                yield sse(
                    chunk(job, rid, name, None, usage_counts=usage(n_prompt, n_completion, n_cached, dones))
                )
    except ApiError as exc:  # the runtime died mid-stream
        yield sse(exc.body())
    finally:
        done()
    yield "data: [DONE]\n\n"
