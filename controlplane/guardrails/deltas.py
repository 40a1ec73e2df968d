"""Per-interval deltas of the routers' cumulative counters (pure, no I/O).

Each router record (tsplit/router_record.py) holds counters cumulative since that router
started. The judge reads every record once a tick; CounterDeltas keeps each router's last
counters and answers what happened since, per deployment and variant, summed across
routers. A router seen for the first time, one whose started_at changed, or one any of
whose counters went down (it restarted: counters survive nothing) gives a new baseline and
no delta that tick: its counts before the baseline belong to no interval the judge knows.
A variant row that appears in a known router's record is new since the last tick (rows
are made on a variant's first request), so all its counts are that tick's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tsplit import router_record
from tsplit.router_record import HISTOGRAMS, N_BUCKETS

# The router record's counts the guardrails read (a subset of router_record.COUNTS).
SCALARS = ("requests", "errors", "failovers", "mirrored", "mirror_dropped", "mirror_answers", "mirror_errors")


@dataclass
class VariantDelta:
    """What one variant's counters did in one interval, summed over routers."""

    requests: int = 0
    errors: int = 0
    failovers: int = 0
    mirrored: int = 0
    mirror_dropped: int = 0
    mirror_answers: int = 0
    mirror_errors: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    mirror_latency_buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def add(self, other: "VariantDelta") -> None:
        for name in SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in HISTOGRAMS:
            mine = getattr(self, name)
            for i, count in enumerate(getattr(other, name)):
                mine[i] += count


Counters = dict[str, dict[str, tuple]]  # slug -> variant -> (scalars..., histograms...)


def read_counters(record: Mapping[str, Any]) -> Counters:
    """The counters the guardrails read, from one router record (a histogram with other
    bounds than ours counts as none: not comparable)."""
    out: Counters = {}
    for slug, name, row in router_record.all_counters(record):
        out.setdefault(slug, {})[name] = (
            tuple(int(router_record.count(row.get(s))) for s in SCALARS)
            + tuple(router_record.histogram(row.get(h)) or (0,) * N_BUCKETS for h in HISTOGRAMS))
    return out


def _delta(now: tuple, before: tuple | None) -> VariantDelta | None:
    """now - before as a VariantDelta; None when any counter went down."""
    scalars = len(SCALARS)
    if before is None:
        before = (0,) * scalars + ((0,) * N_BUCKETS,) * len(HISTOGRAMS)
    values = [a - b for a, b in zip(now[:scalars], before[:scalars])]
    histograms = [[a - b for a, b in zip(hn, hb)] for hn, hb in zip(now[scalars:], before[scalars:])]
    if min(values) < 0 or any(min(h) < 0 for h in histograms):
        return None
    return VariantDelta(*values, *histograms)


@dataclass
class _RouterBaseline:
    started_at: Any
    counters: Counters


class CounterDeltas:
    def __init__(self) -> None:
        self._routers: dict[str, _RouterBaseline] = {}
        self.resets = 0  # routers seen restarting (counters down or a new started_at)

    def tick(self, records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, VariantDelta]]:
        """slug -> variant -> the interval's delta summed across routers."""
        totals: dict[str, dict[str, VariantDelta]] = {}
        seen: set[str] = set()
        for record in records:
            router_id = record.get("router_id")
            if not isinstance(router_id, str) or router_id in seen:
                continue
            seen.add(router_id)
            counters = read_counters(record)
            before = self._routers.get(router_id)
            self._routers[router_id] = _RouterBaseline(record.get("started_at"), counters)
            if before is None:
                continue
            if before.started_at != record.get("started_at"):
                self.resets += 1
                continue
            deltas = self._router_deltas(counters, before.counters)
            if deltas is None:
                self.resets += 1
                continue
            for slug, variants in deltas.items():
                into = totals.setdefault(slug, {})
                for name, delta in variants.items():
                    into.setdefault(name, VariantDelta()).add(delta)
        for gone in [r for r in self._routers if r not in seen]:
            del self._routers[gone]
        return totals

    @staticmethod
    def _router_deltas(now: Counters, before: Counters) -> dict[str, dict[str, VariantDelta]] | None:
        out: dict[str, dict[str, VariantDelta]] = {}
        for slug, variants in now.items():
            old = before.get(slug, {})
            for name, counters in variants.items():
                delta = _delta(counters, old.get(name))
                if delta is None:
                    return None
                out.setdefault(slug, {})[name] = delta
        return out
