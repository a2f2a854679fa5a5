"""What to send when a conversation no longer fits the context: the overflow policies.

* ``rolling``: drop the oldest turns; the system prompt and the last user message always stay.
* ``middle``: keep the first exchange (it often sets the task) and the newest turns; drop between.
* ``stop``: send nothing and say so (:class:`~engine.core.errors.ContextFull`).

Dropped messages stay in the conversation (the store keeps them, the transcript says how many are
outside the model's context); only the prompt leaves them out.

Prefix reuse: the runtime keeps the KV cache of the previous prompt and re-uses its longest
common prefix. If the window slid by one turn on every reply, the prompt would change at its very
start each time and every turn would be prefilled in full. So the cut moves rarely and far: the
previous cut is kept while the prompt still fits, and when it must move it moves until the prompt
uses at most ``1 - slack`` of the budget, leaving room for several turns before the next move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from engine.chat.template import ChatMessage
from engine.core.errors import ContextFull


class OverflowPolicy(str, Enum):
    ROLLING = "rolling"
    MIDDLE = "middle"
    STOP = "stop"


#: Words for each policy, as the GUI and ``kvdeck chat --help`` show them.
POLICY_LABELS = {
    OverflowPolicy.ROLLING: "Rolling window (drop the oldest messages)",
    OverflowPolicy.MIDDLE: "Truncate the middle (keep the first exchange)",
    OverflowPolicy.STOP: "Stop and ask",
}
DEFAULT_SLACK = 0.25


@dataclass(frozen=True)
class Fitted:
    """The turns to send, and what was left out (indices into the turns given)."""

    turns: tuple[ChatMessage, ...]
    dropped: tuple[int, ...]
    prompt_tokens: int
    dropped_tokens: int
    cut: int  # first index after the kept head (pass back as ``previous_cut`` next time)

    @property
    def note(self) -> str:
        """The transcript's line about what the model does not see ("" when nothing)."""
        n = len(self.dropped)
        if not n:
            return ""
        return (
            f"{n} earlier message{'s are' if n > 1 else ' is'} outside the model's context "
            f"({self.dropped_tokens:,} tokens)"
        )


def _user_starts(turns: Sequence[ChatMessage], lo: int) -> list[int]:
    """Cut points: indices >= lo where a user message starts the kept tail (the last user
    message is always a candidate, so it is always kept)."""
    return [i for i, t in enumerate(turns) if i >= lo and t.role == "user"]


def _head_end(turns: Sequence[ChatMessage]) -> int:
    """End of the first exchange: the first user message and the reply that follows it."""
    first = next((i for i, t in enumerate(turns) if t.role == "user"), None)
    if first is None:
        return 0
    end = first + 1
    while end < len(turns) and turns[end].role != "user":
        end += 1
    return end


def fit_turns(
    turns: Sequence[ChatMessage],
    measure: Callable[[Sequence[ChatMessage]], int],
    budget: int,
    policy: OverflowPolicy | str = OverflowPolicy.ROLLING,
    *,
    previous_cut: int = 0,
    slack: float = DEFAULT_SLACK,
) -> Fitted:
    """Choose the turns to send so that ``measure(turns)`` (the whole prompt's tokens, system
    prompt and template included) is at most ``budget``.

    ``measure`` is called O(log n) times. Raises ContextFull under ``stop`` when the whole
    conversation does not fit, and under every policy when the last user message alone does not.
    """
    policy = OverflowPolicy(policy)
    turns = tuple(turns)
    total = measure(turns)
    if total <= budget and previous_cut == 0:
        return Fitted(turns, (), total, 0, 0)
    if policy is OverflowPolicy.STOP:
        if total <= budget:
            return Fitted(turns, (), total, 0, 0)
        raise ContextFull(
            f"the conversation is {total:,} tokens long but the context leaves "
            f"{budget:,} for it: start a new chat, load with a larger context, or "
            "let older messages drop out (overflow policy)"
        )
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=len(turns) - 1)
    head = _head_end(turns) if policy is OverflowPolicy.MIDDLE else 0
    if head > last_user:
        head = 0  # no middle to drop: the first exchange is the last one
    cuts = _user_starts(turns, max(head, 1))
    if not cuts or cuts[-1] != last_user:
        cuts.append(last_user)

    def kept(cut: int) -> tuple[ChatMessage, ...]:
        return turns[:head] + turns[cut:]

    if previous_cut and previous_cut in cuts:  # keep the old cut while it fits: prefix reuse
        tokens = measure(kept(previous_cut))
        if tokens <= budget:
            return _fitted(turns, head, previous_cut, tokens, total)
    target = int(budget * (1.0 - slack))
    lo = next((k for k, c in enumerate(cuts) if c >= previous_cut), len(cuts) - 1)
    choice = _first_fitting(cuts, lo, lambda c: measure(kept(c)), target)
    if choice is None:
        choice = _first_fitting(cuts, lo, lambda c: measure(kept(c)), budget)
    if choice is None and head:
        head = 0
        choice = _first_fitting(cuts, 0, lambda c: measure(turns[c:]), budget)
    if choice is None:
        alone = measure(turns[last_user:])
        raise ContextFull(
            f"the last message alone makes a {alone:,}-token prompt but the context "
            f"leaves {budget:,} for it: shorten it or load with a larger context"
        )
    cut, tokens = choice
    return _fitted(turns, head, cut, tokens, total)


def _first_fitting(
    cuts: list[int], lo: int, tokens_of: Callable[[int], int], limit: int
) -> tuple[int, int] | None:
    """The earliest cut in cuts[lo:] whose prompt is at most ``limit`` tokens (binary search:
    dropping more never makes the prompt longer), with its token count."""
    found: tuple[int, int] | None = None
    hi = len(cuts) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        n = tokens_of(cuts[mid])
        if n <= limit:
            found, hi = (cuts[mid], n), mid - 1
        else:
            lo = mid + 1
    return found


def _fitted(turns: tuple[ChatMessage, ...], head: int, cut: int, tokens: int, total: int) -> Fitted:
    dropped = tuple(range(head, cut))
    return Fitted(turns[:head] + turns[cut:], dropped, tokens, max(0, total - tokens), cut)
