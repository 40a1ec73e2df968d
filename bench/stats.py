"""Statistics the harness reports: percentiles, medians of repetitions, binomial bounds."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is not within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def binomial_bound(trials: int, share: float, confidence: float = 0.999) -> float:
    """Half-width, in counts, of the two-sided normal-approximation interval around
    trials*share that holds `confidence` of the observations of a fair split."""
    if trials <= 0:
        raise ValueError("binomial bound of no trials")
    if not 0 <= share <= 1:
        raise ValueError(f"share {share} is not within 0..1")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return z * math.sqrt(trials * share * (1 - share))


def within_binomial_bound(observed: int, trials: int, share: float, confidence: float = 0.999) -> bool:
    # Half a count of slack: the counts are integers while the bound is continuous.
    return abs(observed - trials * share) <= binomial_bound(trials, share, confidence) + 0.5
