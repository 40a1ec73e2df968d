"""Slot allocation: which variant owns each of a deployment's 10,000 slots (SPEC section 5).

Both planes use this module. The control plane keeps a deployment's `allocation` in its
config and changes it with next_allocation on every change; routers and the proxyless
client route a request to the owner of its slot (slot_of). Because every change moves only
the slots whose owner must change, a sticky key moves only when its slot changes owner.

An allocation is a tuple of SlotRange (start inclusive, end exclusive), sorted, covering
0..10,000 exactly once, with neighbouring ranges of one owner merged: one normal form, so
equal allocations compare and serialise equal. Owners are "champion" or a challenger id.

next_allocation(current, weights) moves slots in three steps, each deterministic:
1. A challenger that is no longer in `weights` (removed, promoted, rolled back) gives all
   its slots to the champion; one that shrinks gives its highest slots to the champion.
2. A challenger that grows (or is new) takes slots the champion held in `current` (never
   the slots just given back, so no slot passes from one challenger to another): first the
   champion slots next to its own ranges, then the champion's highest slots.
3. Slots given back become the champion's.
So the number of slots that change owner is the sum over challengers of |target - held|.
Step 2 always finds enough champion slots when the challengers' total stays at most half
the slots (the control plane's 50 % cap); past that, it takes from the slots given back.

A deployment stored without an allocation (written before allocations existed) gets
legacy_allocation: the champion first, then the active challengers in list order.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

SLOTS = 10_000  # one slot per basis point
CHAMPION = "champion"
_FREED = "\x00freed"  # slots given back during next_allocation, the champion's at the end


class SlotRange(NamedTuple):
    variant: str  # "champion" or a challenger id
    start: int    # inclusive
    end: int      # exclusive

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "start": self.start, "end": self.end}


Allocation = tuple[SlotRange, ...]

WHOLE: Allocation = (SlotRange(CHAMPION, 0, SLOTS),)


def slot_of(slug: str, key: bytes | str) -> int:
    """The slot of routing key `key` in deployment `slug`: the first 8 bytes of
    BLAKE2b(digest_size=8) of UTF-8 slug, NUL, key, as a big-endian integer, mod 10,000."""
    data = (slug + "\x00" + key).encode() if isinstance(key, str) else slug.encode() + b"\x00" + key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % SLOTS


def normalized(ranges: Iterable[Sequence[Any]]) -> Allocation:
    """Sorted by start, empty ranges dropped, neighbours of one owner merged (no checks)."""
    out: list[SlotRange] = []
    for variant, start, end in sorted((r for r in ranges if r[2] > r[1]), key=lambda r: r[1]):
        if out and out[-1].variant == variant and out[-1].end == start:
            out[-1] = SlotRange(variant, out[-1].start, end)
        else:
            out.append(SlotRange(variant, start, end))
    return tuple(out)


def check_allocation(ranges: Iterable[Sequence[Any]]) -> Allocation:
    """The normal form of `ranges`, or ValueError if they do not cover 0..10,000 exactly once."""
    items = [tuple(r) for r in ranges]
    if any(len(r) != 3 for r in items):
        raise ValueError("a slot range is (variant, start, end)")
    if any(items[i][1] > items[i + 1][1] for i in range(len(items) - 1)):
        items.sort(key=lambda r: r[1] if isinstance(r[1], int) else -1)
    out: list[SlotRange] = []
    position = 0
    for variant, start, end in items:
        if not isinstance(variant, str) or not variant or variant == _FREED:
            raise ValueError(f"a slot range's variant must be a non-empty string, got {variant!r}")
        if (isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int)
                or not 0 <= start < end <= SLOTS):
            raise ValueError(f"slot range {variant}:{start}-{end} must have integers 0 <= start < end <= {SLOTS}")
        if start != position:
            what = "overlap" if start < position else "a gap"
            raise ValueError(f"slot ranges must cover 0..{SLOTS} exactly once: {what} at slot {min(position, start)}")
        if out and out[-1].variant == variant:
            out[-1] = SlotRange(variant, out[-1].start, end)
        else:
            out.append(SlotRange(variant, start, end))
        position = end
    if position != SLOTS:
        raise ValueError(f"slot ranges must cover 0..{SLOTS} exactly once: a gap at slot {position}")
    return tuple(out)


def allocation_from_json(data: Any) -> Allocation:
    """An allocation from its JSON form [{"variant", "start", "end"}, ...]; ValueError if malformed."""
    if not isinstance(data, list):
        raise ValueError("allocation must be a list of slot ranges")
    try:
        # Fast path: the normal form, as stored (every config read by every router goes here).
        out: list[SlotRange] = []
        position = 0
        for item in data:
            variant, start, end = item["variant"], item["start"], item["end"]
            if (type(start) is not int or type(end) is not int or start != position or not start < end <= SLOTS
                    or type(variant) is not str or not variant or variant == _FREED
                    or (out and out[-1].variant == variant)):
                break
            out.append(SlotRange(variant, start, end))
            position = end
        else:
            if position == SLOTS:
                return tuple(out)
        return check_allocation([(item["variant"], item["start"], item["end"]) for item in data])
    except (TypeError, KeyError):
        raise ValueError("every slot range must be an object with variant, start and end") from None


def allocation_to_json(allocation: Allocation) -> list[dict[str, Any]]:
    return [r.to_json() for r in allocation]


def slot_counts(allocation: Allocation) -> dict[str, int]:
    """Slots per owner (owners with no slot are absent)."""
    counts: dict[str, int] = {}
    for variant, start, end in allocation:
        counts[variant] = counts.get(variant, 0) + end - start
    return counts


def moved_slots(before: Allocation, after: Allocation) -> int:
    """How many slots have another owner in `after` than in `before` (both full allocations)."""
    moved, i, j, position = 0, 0, 0, 0
    while position < SLOTS and i < len(before) and j < len(after):
        end = min(before[i].end, after[j].end)
        if before[i].variant != after[j].variant:
            moved += end - position
        position = end
        if before[i].end == end:
            i += 1
        if after[j].end == end:
            j += 1
    return moved


def _targets(weights: Mapping[str, int]) -> dict[str, int]:
    targets: dict[str, int] = {}
    for variant, slots in weights.items():
        if variant in (CHAMPION, _FREED) or not isinstance(variant, str) or not variant:
            raise ValueError(f"a challenger cannot be named {variant!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
            raise ValueError(f"challenger {variant}: slots must be a non-negative integer, got {slots!r}")
        if slots:
            targets[variant] = slots
    if sum(targets.values()) > SLOTS:
        raise ValueError(f"challengers' slots sum to {sum(targets.values())}, over {SLOTS}")
    return targets


def _expected_counts(targets: Mapping[str, int]) -> dict[str, int]:
    champion = SLOTS - sum(targets.values())
    return {**({CHAMPION: champion} if champion else {}), **targets}


def legacy_allocation(weights: Mapping[str, int]) -> Allocation:
    """The allocation of a config stored without one: the champion's slots first (from 0),
    then each challenger's in the order of `weights` (the deployment's list order)."""
    targets = _targets(weights)
    position = SLOTS - sum(targets.values())
    ranges = [SlotRange(CHAMPION, 0, position)] if position else []
    for variant, slots in targets.items():
        ranges.append(SlotRange(variant, position, position + slots))
        position += slots
    return tuple(ranges)


def fits(allocation: Allocation, weights: Mapping[str, int]) -> bool:
    """Whether each challenger in `weights` (valid ones, as a Deployment gives them) owns
    exactly its slots in `allocation` and the champion the rest: nothing to move."""
    counts = slot_counts(allocation)
    champion = counts.pop(CHAMPION, 0)
    return counts == weights and champion == SLOTS - sum(weights.values())


def _give(ranges: list[list[Any]], variant: str, count: int) -> None:
    """`variant` gives its `count` highest slots back (labelled _FREED)."""
    for r in sorted((r for r in ranges if r[0] == variant), key=lambda r: r[1], reverse=True):
        if count <= 0:
            return
        taken = min(count, r[2] - r[1])
        if taken == r[2] - r[1]:
            r[0] = _FREED
        else:
            ranges.append([_FREED, r[2] - taken, r[2]])
            r[2] -= taken
        count -= taken


def _take_from(ranges: list[list[Any]], r: list[Any], variant: str, count: int, at_end: bool) -> int:
    """Relabel up to `count` slots of range r for `variant`, at its end or its start."""
    taken = min(count, r[2] - r[1])
    if taken == r[2] - r[1]:
        r[0] = variant
    elif at_end:
        ranges.append([variant, r[2] - taken, r[2]])
        r[2] -= taken
    else:
        ranges.append([variant, r[1], r[1] + taken])
        r[1] += taken
    return taken


def _grow(ranges: list[list[Any]], variant: str, count: int, pool: str) -> int:
    """`variant` takes up to `count` slots labelled `pool`; returns how many it still lacks."""
    while count > 0:  # pool ranges touching the variant's own, the highest first
        own_starts = {r[1] for r in ranges if r[0] == variant}
        own_ends = {r[2] for r in ranges if r[0] == variant}
        touching = [r for r in ranges if r[0] == pool and (r[1] in own_ends or r[2] in own_starts)]
        if not touching:
            break
        r = max(touching, key=lambda r: r[1])
        count -= _take_from(ranges, r, variant, count, at_end=r[2] in own_starts)
    while count > 0:  # then the pool's highest slots
        pool_ranges = [r for r in ranges if r[0] == pool]
        if not pool_ranges:
            break
        count -= _take_from(ranges, max(pool_ranges, key=lambda r: r[1]), variant, count, at_end=True)
    return count


def next_allocation(current: Allocation, weights: Mapping[str, int]) -> Allocation:
    """The allocation after a change: each challenger in `weights` owns exactly its slots
    (basis points), the champion the rest, and only the slots whose owner must change move
    (see the module doc). `current` must be a full allocation (check_allocation); `weights`
    maps active challenger ids to slots, in the deployment's order (a challenger of 0 slots
    or absent owns none). The same inputs always give the same allocation."""
    targets = _targets(weights)
    have = slot_counts(current)
    if have == _expected_counts(targets):
        return current
    ranges = [[r.variant, r.start, r.end] for r in current]
    for variant, held in have.items():
        if variant != CHAMPION and held > targets.get(variant, 0):
            _give(ranges, variant, held - targets.get(variant, 0))
    for variant, target in targets.items():
        lacking = target - have.get(variant, 0)
        if lacking > 0:
            lacking = _grow(ranges, variant, lacking, CHAMPION)
            if lacking > 0:  # only past half the slots: nothing else left to take
                _grow(ranges, variant, lacking, _FREED)
    return normalized([CHAMPION if r[0] == _FREED else r[0], r[1], r[2]] for r in ranges)
