"""benchmarks/server_vs_llama.py's steady decode rate, the client-side figure compared with
llama-batched-bench: it must not depend on how a server groups tokens into stream chunks.

llama-server sends every token as its own chunk; kvdeck sends a reply's first token at once and
then what came in each 20 ms. Both say in every chunk how many tokens came so far
(``timings.predicted_n`` with ``timings_per_token``). The same tokens at the same times must
give the same rate.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.server_vs_llama import compact_json, steady_decode

STEP_S = 0.004  # a decode step: one token per stream


def _reply(start: float, n_tokens: int, per_chunk: int, counted: bool = True) -> dict:
    """A reply whose token i comes at start + i steps, sent ``per_chunk`` tokens a chunk after
    the first token, which goes alone; ``counted``: each chunk says how many came so far."""
    at = [start + i * STEP_S for i in range(n_tokens)]
    last = [0] + [min(i + per_chunk - 1, n_tokens - 1) for i in range(1, n_tokens, per_chunk)]
    times = [at[j] for j in last]
    counts = [j + 1 for j in last] if counted else None
    return {"first": times[0], "end": times[-1], "tokens": n_tokens, "times": times, "counts": counts}


@pytest.mark.parametrize("per_chunk", [1, 3, 6])
@pytest.mark.parametrize("streams", [1, 4, 16])
def test_the_steady_rate_is_the_decode_rate_however_tokens_are_grouped_in_chunks(
    per_chunk: int, streams: int
) -> None:
    replies = [_reply(0.001 * s, 128, per_chunk) for s in range(streams)]
    rate, window = steady_decode(replies, streams)
    assert window > 0 and rate == pytest.approx(streams / STEP_S, rel=1e-3)


@pytest.mark.parametrize("per_chunk", [1, 6])
def test_without_counts_a_lone_stream_takes_its_first_chunk_as_its_first_token(per_chunk: int) -> None:
    rate, _ = steady_decode([_reply(0.0, 128, per_chunk, counted=False)], 1)
    assert rate == pytest.approx(1 / STEP_S, rel=1e-3)


def test_a_result_file_keeps_every_number_with_each_innermost_list_on_one_line() -> None:
    result = {"timeline": {"replies": [[0.0, 0.1, 1.2, 3, [[0.1, 1], [0.2, 3]]]], "windows": []}, "n": [1]}
    text = compact_json(result)
    assert json.loads(text) == result
    assert "[0.1, 1]" in text and "[]" in text and '"n": [1]' in text
