"""OpenAI response shapes for the API server: choices, usage, logprobs, streamed chunks.

The other half of engine.serve.openai_api (which parses what clients send): these build what
they receive, so the JSON a client sees is written in one place for full and streamed replies.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from engine.serve.openai_api import Job

#: How a reply ended in the child (engine.child.batch) → OpenAI's finish_reason.
FINISH = {"eog": "stop", "stop": "stop", "length": "length", "context": "length"}


@dataclass
class DraftTally:
    """Drafted and accepted tokens per draft position, summed over replies (P.Done): one
    request's (its usage) or every drafted reply since the server started (/v1/kvdeck/memory).
    Acceptance at position i is accepted_at[i] / drafted_at[i]."""

    draft: str = ""
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)

    def add(self, done: Any) -> None:
        if not getattr(done, "draft", ""):
            return
        self.draft = done.draft
        for counts, more in ((self.drafted_at, done.drafted_at), (self.accepted_at, done.accepted_at)):
            counts.extend([0] * (len(more) - len(counts)))
            for i, n in enumerate(more):
                counts[i] += n

    def summary(self) -> dict[str, Any]:
        at, ok = list(self.drafted_at), list(self.accepted_at)
        ok += [0] * (len(at) - len(ok))
        return {
            "draft": self.draft,
            "drafted_tokens": sum(at),
            "accepted_tokens": sum(ok),
            "drafted_at": at,
            "accepted_at": ok,
            "acceptance_by_position": [round(a / d, 4) if d else 0.0 for a, d in zip(ok, at)],
        }


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(
    n_prompt: int, n_completion: int, n_cached: int = 0, done: list[Any] | None = None
) -> dict[str, Any]:
    """OpenAI's usage; ``cached_tokens``: prompt tokens whose KV the sequence already held. With
    drafting, ``kvdeck_drafting`` adds the replies' (``done``, P.Done) counts per draft position:
    acceptance at position i is accepted_at[i] / drafted_at[i]."""
    out: dict[str, Any] = {
        "prompt_tokens": n_prompt,
        "completion_tokens": n_completion,
        "total_tokens": n_prompt + n_completion,
        "prompt_tokens_details": {"cached_tokens": n_cached},
    }
    tally = DraftTally()
    for d in done or []:
        tally.add(d)
    if tally.draft:
        out["kvdeck_drafting"] = tally.summary()
    return out


def logprobs_body(job: Job, entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any] | None:
    """OpenAI's logprobs object from the child's entries (engine.child.grammar.logprob_entry)."""
    if job.logprobs < 0:
        return None
    if job.kind == "chat":
        return {
            "content": [
                {
                    "token": e["token"],
                    "logprob": e["logprob"],
                    "bytes": list(e["token"].encode("utf-8")),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for _, t, lp in e["top"]
                    ],
                }
                for e in entries
            ]
        }
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t: lp for _, t, lp in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def choice(
    job: Job,
    index: int,
    text: str,
    finish: str,
    entries: list[dict[str, Any]],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    lp = logprobs_body(job, entries)
    if job.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": lp}
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": lp}


def response(
    job: Job,
    rid: str,
    model: str,
    choices: list[dict[str, Any]],
    n_prompt: int,
    n_completion: int,
    n_cached: int = 0,
    done: list[Any] | None = None,
) -> dict[str, Any]:
    obj = "chat.completion" if job.kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(n_prompt, n_completion, n_cached, done),
    }


def chunk(
    job: Job,
    rid: str,
    model: str,
    text: str | None,
    finish: str | None = None,
    *,
    first: bool = False,
    usage_counts: dict[str, Any] | None = None,
    index: int = 0,
    entries: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    n_so_far: int = 0,
) -> dict[str, Any]:
    """One server-sent event; ``usage_counts`` makes the extra final chunk with no choices; with
    ``timings_per_token`` a chunk has llama-server's ``timings.predicted_n``, ``n_so_far``: the
    tokens generated up to it (a chunk holds every token of about 20 ms, engine.child.io)."""
    lp = logprobs_body(job, entries or []) if entries else None
    if job.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        if tool_calls:
            delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(tool_calls)]
        choices: list[dict[str, Any]] = [
            {"index": index, "delta": delta, "finish_reason": finish, "logprobs": lp}
        ]
        obj = "chat.completion.chunk"
    else:
        choices = [{"index": index, "text": text or "", "finish_reason": finish, "logprobs": lp}]
        obj = "text_completion"
    out: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage_counts is not None else choices,
    }
    if usage_counts is not None:
        out["usage"] = usage_counts
    if job.timings_per_token and usage_counts is None:
        out["timings"] = {"predicted_n": n_so_far}
    return out
