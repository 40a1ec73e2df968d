"""The slot allocation (tsplit.allocation): its properties over generated changes, and the
vectors every implementation shares (tests/vectors/slots.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tsplit.allocation import (
    CHAMPION, SLOTS, WHOLE, SlotRange, allocation_from_json, allocation_to_json, check_allocation,
    legacy_allocation, moved_slots, next_allocation, slot_counts, slot_of)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "slots.json").read_text())
MAX_CHALLENGER_SLOTS = SLOTS // 2  # the control plane's 50 % cap
NO_DEADLINE = settings(deadline=None, max_examples=300)
names = st.sampled_from([f"ch_{c}" for c in "abcdefgh"])


def owners(allocation) -> list[str]:
    """The owner of every slot, slot by slot."""
    out = []
    for variant, start, end in allocation:
        out += [variant] * (end - start)
    return out


@st.composite
def weights(draw, cap: int = MAX_CHALLENGER_SLOTS) -> dict[str, int]:
    chosen = draw(st.lists(names, max_size=6, unique=True))
    out, budget = {}, cap
    for name in chosen:
        if budget < 1:
            break
        out[name] = draw(st.integers(1, min(budget, cap)))
        budget -= out[name]
    return out


@st.composite
def histories(draw, cap: int = MAX_CHALLENGER_SLOTS):
    """A legacy start and a list of changes of weights (add, update, remove, promote)."""
    return draw(weights(cap)), draw(st.lists(weights(cap), min_size=1, max_size=6))


def assert_exact(allocation, targets):
    assert check_allocation(allocation) == allocation  # covers 0..10,000 once, normal form
    counts = slot_counts(allocation)
    assert {v: n for v, n in counts.items() if v != CHAMPION} == {v: n for v, n in targets.items() if n}
    assert counts.get(CHAMPION, 0) == SLOTS - sum(targets.values())


@NO_DEADLINE
@given(histories())
def test_every_change_owns_each_slot_once_and_moves_only_what_the_weights_moved(history):
    start, changes = history
    current = legacy_allocation(start)
    assert_exact(current, start)
    held = dict(start)
    for new in changes:
        after = next_allocation(current, new)
        assert_exact(after, new)
        before_owners, after_owners = owners(current), owners(after)
        moves = [(a, b) for a, b in zip(before_owners, after_owners) if a != b]
        weight_moved = sum(abs(new.get(v, 0) - held.get(v, 0)) for v in set(new) | set(held))
        assert len(moves) == weight_moved == moved_slots(current, after)
        assert all(CHAMPION in pair for pair in moves), "a slot moved between two challengers"
        assert next_allocation(current, new) == after  # deterministic
        assert next_allocation(after, new) is after    # nothing to change: the same allocation
        current, held = after, new


@NO_DEADLINE
@given(histories(cap=SLOTS))
def test_past_half_the_slots_every_slot_is_still_owned_once_and_exactly(history):
    start, changes = history
    current = legacy_allocation(start)
    for new in changes:
        current = next_allocation(current, new)
        assert_exact(current, new)


@NO_DEADLINE
@given(weights(), st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=40))
def test_a_key_keeps_its_owner_unless_its_slot_changed_owner(start, sample):
    before = legacy_allocation(start)
    after = next_allocation(before, {**start, "ch_new": 100})
    changed = {i for i, (a, b) in enumerate(zip(owners(before), owners(after))) if a != b}
    assert len(changed) == 100
    for key in sample:
        slot = slot_of("dep_p", key)
        assert (owners(before)[slot] != owners(after)[slot]) == (slot in changed)


def test_a_removed_or_promoted_challenger_gives_every_slot_to_the_champion():
    current = legacy_allocation({"ch_a": 2000, "ch_b": 1000})
    after = next_allocation(current, {"ch_b": 1000})
    assert after == (SlotRange(CHAMPION, 0, 9000), SlotRange("ch_b", 9000, SLOTS))


def test_a_growing_challenger_extends_its_own_range():
    current = legacy_allocation({"ch_a": 2000, "ch_b": 1000})  # champion 0-7000, a 7000-9000, b 9000-10000
    assert next_allocation(current, {"ch_a": 3000, "ch_b": 1000}) == (
        SlotRange(CHAMPION, 0, 6000), SlotRange("ch_a", 6000, 9000), SlotRange("ch_b", 9000, SLOTS))


@pytest.mark.parametrize("ranges, fragment", [
    ([("champion", 0, 9000)], "gap at slot 9000"),
    ([("champion", 0, 9000), ("ch_a", 8000, 10000)], "overlap"),
    ([("champion", 0, 10000), ("ch_a", 5, 5)], "start < end"),
    ([("", 0, 10000)], "non-empty"),
    ([("champion", 0, 10001)], "end <= 10000"),
])
def test_malformed_allocations_are_refused_with_the_reason(ranges, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_allocation(ranges)


def test_json_round_trip_and_malformed_json():
    allocation = legacy_allocation({"ch_a": 1234})
    assert allocation_from_json(json.loads(json.dumps(allocation_to_json(allocation)))) == allocation
    for bad in ({}, [{"variant": "champion", "start": 0}], [{"variant": "champion", "start": 0, "end": "9"}]):
        with pytest.raises(ValueError):
            allocation_from_json(bad)


def test_weights_over_the_slots_or_naming_the_champion_are_refused():
    with pytest.raises(ValueError, match="over"):
        next_allocation(WHOLE, {"ch_a": 6000, "ch_b": 5000})
    with pytest.raises(ValueError, match="champion"):
        next_allocation(WHOLE, {CHAMPION: 10})


# --- the shared vectors --------------------------------------------------------------------

def test_vectors_slots_match_slot_of():
    assert len(VECTORS["slots"]) >= 20
    for case in VECTORS["slots"]:
        assert slot_of(case["slug"], case["key"]) == case["slot"], case
        assert slot_of(case["slug"], case["key"].encode()) == case["slot"]


def test_vectors_allocation_changes_match_next_allocation():
    assert len(VECTORS["allocation_changes"]) >= 5
    for case in VECTORS["allocation_changes"]:
        current = allocation_from_json(case["current"])
        weights = {w["variant"]: w["slots"] for w in case["weights"]}
        assert allocation_to_json(next_allocation(current, weights)) == case["expected"], case["name"]
