"""The propagation bench's two clocks (bench/propagation.py): swap lines parsed from router
logs, the swap that belongs to a change, contradictions between probes and the logged swap,
and the per-change figures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.propagation import Answer, Change, contradictions, first_swap_after, parse_swaps, timings

LOG = """2026-11-22 17:08:02,379 DEBUG grpc._cython.cygrpc: [_cygrpc] Loaded running loop
2026-11-22 17:08:02,400 DEBUG dataplane.config_sync: config revision 41: batch read at 100.000100, swapped at 100.000300
2026-11-22 17:08:02,500 INFO tsplit.router: router t0 serving
2026-11-22 17:08:02,600 DEBUG dataplane.config_sync: config revision 44: batch read at 100.100000, swapped at 100.100250
"""


def test_parse_swaps_reads_only_swap_lines():
    swaps = parse_swaps(LOG)
    assert [(s.revision, s.read, s.swapped) for s in swaps] == [(41, 100.0001, 100.0003), (44, 100.1, 100.10025)]


def test_first_swap_after_the_change_was_written():
    swaps = parse_swaps(LOG)
    assert first_swap_after(swaps, 99.0).revision == 41
    assert first_swap_after(swaps, 100.05).revision == 44
    assert first_swap_after(swaps, 100.2) is None


def test_contradictions_are_probes_on_the_wrong_side_of_the_swap():
    swapped = 10.0
    answers = [
        Answer(9.0, 9.5, 4),     # old, before the swap: fine
        Answer(9.9, 10.2, 4),    # old, sent before the swap and read before it: fine
        Answer(9.9, 10.3, 5),    # new, answered after the swap: fine
        Answer(10.1, 10.4, 4),   # old but sent after the swap: contradiction
        Answer(9.0, 9.8, 5),     # new but answered before the swap: contradiction
        Answer(10.5, 10.6, 0),   # an error carries no version: ignored
    ]
    assert contradictions(answers, 5, swapped) == 2


def test_timings_take_the_slowest_router_and_clamp_at_zero():
    logs = ["config revision 7: batch read at 1.001000, swapped at 1.002000\n",
            "config revision 7: batch read at 1.003000, swapped at 1.004000\n"]
    answers = ([Answer(1.005, 1.009, 3)], [Answer(1.003, 1.007, 2), Answer(1.007, 1.010, 3)])
    result = timings([Change(written=1.0, reference=1.005, version=3, answers=answers)], logs)
    assert result.swapped_ms == [0.0]                     # both swapped before the 200
    assert result.answered_ms == pytest.approx([5.0])     # the slowest first new answer: 1.010
    assert result.probe_rtt_ms == pytest.approx([4.0, 4.0, 3.0])
    assert result.contradictions == 0 and result.unlogged == 0
    later = timings([Change(written=1.0, reference=1.0015, version=3, answers=answers)], logs)
    assert later.swapped_ms == pytest.approx([2.5])      # the second router swapped at 1.004


def test_a_router_without_a_logged_swap_is_counted_not_guessed():
    answers = ([Answer(1.0, 1.002, 3)], [Answer(1.0, 1.003, 3)])
    result = timings([Change(1.0, 1.0, 3, answers)], ["config revision 7: batch read at 1.0005, swapped at 1.001\n", ""])
    assert result.unlogged == 1 and result.swapped_ms == [] and result.answered_ms == pytest.approx([3.0])


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10), st.integers(1, 9)), max_size=30),
       st.integers(1, 9), st.floats(0, 110))
def test_probes_consistent_with_a_swap_never_contradict_it(raw, version, swapped):
    """Answers made by a router that switched at `swapped` (old before, new after) agree with it."""
    answers = []
    for sent, rtt, old in raw:
        served = sent + rtt / 2
        answers.append(Answer(sent, sent + rtt, version if served >= swapped else min(old, version - 1) or 0))
    assert contradictions(answers, version, swapped) == 0
