"""A conversation with a loaded model: prompt building and one-shot replies for GUI and CLI.

Knows nothing about windows or terminals; both front ends call :func:`conversation_prompt`
so a reply in the GUI and ``kvdeck chat`` see exactly the same prompt text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine import protocol as P
from engine.chat.overflow import Fitted, OverflowPolicy, fit_turns
from engine.chat.template import ChatMessage, Prompt, build_prompt
from engine.core.errors import TemplateError
from engine.core.sampling import SamplingParams
from engine.runtime.host import RuntimeHost


def conversation_prompt(loaded: P.Loaded, system_prompt: str, turns: list[ChatMessage]) -> Prompt:
    """The prompt for the next reply, using the model's own template when it has one.

    Some templates (Gemma's, Mistral's) refuse a system role; then the system prompt is folded
    into the first user turn, which is what those models were trained to see.
    """
    template = loaded.chat_template or None
    system = [ChatMessage("system", system_prompt)] if system_prompt.strip() else []
    try:
        return build_prompt(template, system + turns, bos_token=loaded.bos_text, eos_token=loaded.eos_text)
    except TemplateError:
        if not system or not turns or turns[0].role != "user":
            raise
    merged = [ChatMessage("user", f"{system_prompt.strip()}\n\n{turns[0].content}")] + turns[1:]
    return build_prompt(template, merged, bos_token=loaded.bos_text, eos_token=loaded.eos_text)


def reply_reserve(n_ctx_seq: int, max_tokens: int) -> int:
    """Tokens kept free for the reply when fitting the prompt: the reply's maximum, but never more
    than a quarter of the context (a 2,000-token maximum must not hide a 512-token conversation)."""
    return max(1, min(max_tokens, n_ctx_seq // 4))


def fit_conversation(
    tokenize: Callable[[str], list[int]],
    loaded: P.Loaded,
    system_prompt: str,
    turns: Sequence[ChatMessage],
    *,
    max_tokens: int,
    policy: OverflowPolicy | str = OverflowPolicy.ROLLING,
    previous_cut: int = 0,
) -> Fitted:
    """The turns to send for the next reply (engine.chat.overflow), measured with the runtime's own
    tokenizer on the rendered prompt, so template tokens and the system prompt count too.

    ``tokenize`` is ``RuntimeHost.tokenize``: a round trip to the child per measurement (O(log n)
    of them), so GUI callers run this off the GUI thread. Raises ContextFull (see fit_turns)."""
    cache: dict[tuple[ChatMessage, ...], int] = {}

    def measure(ts: Sequence[ChatMessage]) -> int:
        key = tuple(ts)
        if key not in cache:
            cache[key] = len(tokenize(conversation_prompt(loaded, system_prompt, list(key)).text))
        return cache[key]

    budget = loaded.n_ctx_seq - reply_reserve(loaded.n_ctx_seq, max_tokens)
    return fit_turns(turns, measure, budget, policy, previous_cut=previous_cut)


def end_reason(done: P.Done, n_ctx_seq: int) -> str:
    """How a reply ended, as ``engine.storage.records.END_REASONS`` names it.

    The child caps a reply at the room left in the context and then reports "length"; a reply
    that filled the context is "context" whatever the child called it."""
    if done.stop_reason == "cancelled":
        return "stop"
    if done.stop_reason == "context" or (n_ctx_seq and done.n_prompt + len(done.tokens) >= n_ctx_seq - 1):
        return "context"
    return "length" if done.stop_reason == "length" else "eog"


@dataclass(frozen=True)
class Reply:
    """A finished reply with the numbers the CLI prints and the GUI shows."""

    prompt: Prompt
    done: P.Done


def reply(
    host: RuntimeHost,
    loaded: P.Loaded,
    turns: list[ChatMessage],
    *,
    system_prompt: str = "",
    sampling: SamplingParams | None = None,
    max_tokens: int = 512,
    on_text: Callable[[str], None] | None = None,
    draft: str = "",
    draft_max: int = 8,
    json_schema: str = "",
) -> Reply:
    """Generate the next assistant turn, streaming text to ``on_text`` as it arrives.

    ``draft``: "" plain decoding, "model" (the draft loaded with ``host.load_draft``) or
    "lookup" (n-gram drafting); the reply is the same either way, only faster or slower."""
    prompt = conversation_prompt(loaded, system_prompt, turns)

    def on_event(msg: P.Message) -> None:
        if on_text is not None and isinstance(msg, P.Delta) and msg.text:
            on_text(msg.text)

    done = host.generate(
        prompt.text,
        max_tokens=max_tokens,
        sampling=sampling,
        on_event=on_event,
        draft=draft,
        draft_max=draft_max,
        json_schema=json_schema,
    )
    return Reply(prompt=prompt, done=done)
