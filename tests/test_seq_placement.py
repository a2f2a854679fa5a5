"""Which free sequence a new request gets in the batch loop (engine.child.prefix.choose).

With a KV stream per sequence, llama.cpp computes a step in one ubatch per run of consecutive
sequence ids (split_equal with ``sequential``): busy sequences 0 and 3 read every weight twice a
step. So a request goes where the busy ids stay one run; among those, to the longest cached
prefix; then to the sequence holding least; then to the lowest id. A long cached prefix the
prompt does not share is a conversation's next turn: it is neither given away nor moved over.
When a gap opens and nobody waits for it, busy sequences move down (``gap_moves``).
"""

from __future__ import annotations

from engine.child.prefix import choose, gap_moves, runs


def test_runs_count_the_ubatches_of_a_step() -> None:
    assert runs([]) == 0
    assert runs([0, 1, 2]) == 1
    assert runs([3, 4]) == 1
    assert runs([0, 3]) == 2
    assert runs([5, 0, 1, 7]) == 3


def test_a_request_fills_the_gap_rather_than_reuse_a_short_prefix_elsewhere() -> None:
    free = [1, 2, 3]
    reuse = {1: 0, 2: 0, 3: 20}
    held = {1: 0, 2: 0, 3: 40}
    assert choose(free, [0], reuse, held, streams=True, keep=512) == 1  # busy {0}: only 1 keeps one run
    assert choose([1, 3], [0, 2], {1: 0, 3: 20}, {1: 0, 3: 40}, streams=True, keep=512) == 1  # {0,1,2}


def test_next_to_the_busy_run_a_cached_prefix_still_wins() -> None:
    """Busy {2}: both 1 and 3 keep one run, and 3 holds the prompt's prefix."""
    assert choose([0, 1, 3], [2], {0: 0, 1: 0, 3: 300}, {0: 0, 1: 0, 3: 300}, streams=True, keep=512) == 3


def test_with_nothing_busy_the_longest_prefix_wins() -> None:
    assert choose([0, 1, 2], [], {0: 5, 1: 300, 2: 0}, {0: 10, 1: 400, 2: 0}, streams=True, keep=512) == 1


def test_a_unified_cache_places_by_prefix_alone() -> None:
    """One stream for all sequences: any ids share a ubatch."""
    assert choose([1, 3], [0], {1: 0, 3: 20}, {1: 0, 3: 40}, streams=False, keep=512) == 3


def test_ties_go_to_the_sequence_holding_least_then_the_lowest() -> None:
    assert choose([1, 2], [], {1: 0, 2: 0}, {1: 50, 2: 0}, streams=True, keep=512) == 2
    assert choose([2, 1], [], {1: 0, 2: 0}, {1: 0, 2: 0}, streams=True, keep=512) == 1


def test_a_long_unrelated_prefix_is_not_given_away_while_another_sequence_is_free() -> None:
    """Sequence 1 holds another conversation's 600 tokens; 3 breaks the run but spoils nothing."""
    assert choose([1, 3], [0, 2], {1: 0, 3: 0}, {1: 600, 3: 0}, streams=True, keep=512) == 3


def test_gap_moves_close_a_gap_in_as_many_moves_as_it_takes() -> None:
    assert gap_moves([0, 3, 4], [1, 2, 5], {1: 0, 2: 0, 5: 0}, keep=512) == [(4, 1), (3, 2)]
    assert gap_moves([0, 2], [1, 3], {1: 10, 3: 0}, keep=512) == [(2, 1)]


def test_gap_moves_never_leave_more_runs_or_overwrite_a_long_prefix() -> None:
    """Sequences 1 and 3 hold 600-token conversations: moving 5 into 2 would make three runs."""
    assert gap_moves([0, 4, 5], [1, 2, 3], {1: 600, 2: 0, 3: 600}, keep=512) == []
    assert gap_moves([0, 2], [1], {1: 600}, keep=512) == []
    assert gap_moves([0, 1, 2], [3, 4], {3: 0, 4: 0}, keep=512) == []  # already one run
