"""Which free sequence a new request gets in the batch loop (engine.child.prefix.choose).

With a KV stream per sequence, llama.cpp computes a step in one ubatch per run of consecutive
sequence ids (split_equal with ``sequential``): busy sequences 0 and 3 read every weight twice a
step. So a request goes where the busy ids stay one run; among those, to the longest cached
prefix; then to the sequence holding least; then to the lowest id. A long cached prefix the
prompt does not share is a conversation's next turn: it is neither given away nor moved over.
When a gap opens and nobody waits for it, busy sequences move down (``gap_moves``).
A prefix counts only when it is more than a tenth of the prompt (llama-server's slot
similarity), and requests admitted together are placed together (``arrange``).
"""

from __future__ import annotations

from engine.child.prefix import arrange, assign, choose, gap_moves, runs, useful


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


def test_a_prefix_counts_when_it_is_more_than_a_tenth_of_the_prompt() -> None:
    assert useful(1, 127) == 0  # a BOS token
    assert useful(12, 127) == 0
    assert useful(13, 127) == 13


def _prompt(k: int, n: int = 127) -> list[int]:
    """A BOS, then tokens of conversation ``k`` alone."""
    return [1] + [1000 * (k + 1) + t for t in range(n - 1)]


def test_a_new_conversation_takes_a_free_sequence_not_one_sharing_only_the_bos() -> None:
    kept = {0: _prompt(0) + [7] * 128, 1: [], 2: []}
    assert arrange([0, 1, 2], [], kept, [_prompt(5)], streams=True, keep=512) == [(1, 0)]


def test_requests_admitted_together_each_find_their_own_conversation_whatever_their_order() -> None:
    """Four conversations sit in sequences 0-3; their next turns arrive together, in any order."""
    kept = {i: _prompt(i) + [7] * 128 for i in range(4)} | {i: [] for i in range(4, 8)}
    free = list(range(8))
    for order in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]):
        placed = arrange(free, [], kept, [_prompt(k) + [9] for k in order], streams=True, keep=512)
        assert placed == [(k, 127) for k in order]


def test_requests_admitted_together_without_a_prefix_fill_one_run_of_ids() -> None:
    kept = {i: [] for i in range(2, 8)}
    placed = arrange(list(range(2, 8)), [0, 1], kept, [_prompt(k) for k in range(3)], streams=True, keep=512)
    assert sorted(i for i, _ in placed) == [2, 3, 4] and all(r == 0 for _, r in placed)


def test_assign_gives_the_largest_prefixes_first_and_the_rest_in_order() -> None:
    assert assign([4, 5, 6], [{4: 0, 5: 0, 6: 0}, {4: 0, 5: 90, 6: 30}, {4: 0, 5: 80, 6: 0}]) == [4, 5, 6]
    assert assign([4, 5], [{4: 0, 5: 0}, {4: 50, 5: 0}]) == [5, 4]
