"""The always-valid tests of the guardrails (SPEC 5a). Pure: no etcd, no gRPC, no clock.

The judge feeds each test one interval at a time (a second of router counters, all under one
weight setting) and reads a decision that stays valid however often it looks: each test keeps
a test supermartingale M_t (a nonnegative process with E[M_t] <= 1 under the null), and by
Ville's inequality P(sup_t M_t >= 1/alpha) <= alpha. So "reject as soon as M_t >= 1/alpha"
has a false-alarm chance of at most alpha over the whole experiment, at any number of looks.

Error rate (`ErrorRateTest`). psi = p_challenger / p_champion. Within interval t, with n_c,t
and n_b,t the challenger's and champion's requests and e_t = e_c,t + e_b,t the interval's
errors, an error is the challenger's with probability q_t(psi) = psi n_c / (psi n_c + n_b).
Under psi = 1 that holds whatever the shared error rate is in that interval, which is why the
test conditions on every interval and never pools counts across them: shares may change
between intervals (a ramp) and the shared rate may drift, and the product of the intervals'
conditional likelihood ratios is still a supermartingale. (Strictly, given the totals the
challenger's errors are hypergeometric, which is smaller than the binomial in convex order
(Hoeffding 1963), so the binomial likelihood ratio's expectation is <= 1; for psi < 1 the
likelihood ratio against psi = 1 has expectation <= 1 as well, by convexity of the binomial's
log-partition function: the null is "psi <= 1", the challenger no worse.) The mixture
    M_t = sum_j pi_j prod_{s<=t} (q_s(psi_j)/q_s(1))^e_c,s ((1-q_s(psi_j))/(1-q_s(1)))^e_b,s
is over `ALTERNATIVE_PSI`, 48 points log-spaced in [1.1, 10] with weights `ALTERNATIVE_WEIGHTS`
(Lindon & Malek, "Anytime-valid inference for multinomial count data", NeurIPS 2022, do the
same with a conjugate prior; a grid keeps every term exact). Rejected when M_t >= 1/alpha.

Everything is kept in log space as one vector: the log-likelihood ratio lambda_t(psi) =
log L_t(psi) - log L_t(1) on a lattice of psi (100 points a decade, psi in [1e-3, 1e3],
`LATTICE_PSI`), which each interval updates in O(lattice) with logaddexp. The alternatives
are lattice points, so log M_t = logsumexp(log pi + lambda_t[alternatives]).

Estimate and confidence sequence of psi, from the same likelihoods: the estimate is the
conditional maximum-likelihood psi (argmax of lambda_t on the lattice, refined by a parabola
through its neighbours). The interval [lower, upper] inverts the same mixture test shifted to
each candidate psi0 of the lattice in [0.01, 100]: psi0 is below `lower` when
M+_t(psi0) = sum_j pi_j L_t(psi0 psi_j) / L_t(psi0) >= 1/alpha (the data favour psi above
psi0 as strongly as the rollback needs), and above `upper` when the mirrored mixture
M-_t(psi0) = sum_j pi_j L_t(psi0 / psi_j) / L_t(psi0) >= 1/alpha. Each bound is a one-sided
(1 - alpha) confidence sequence, valid at every t at once (so the pair covers psi with
probability >= 1 - 2 alpha); M+_t(1) is exactly the test's M_t, so "rejected" and
"lower > 1" agree. Bounds are rounded outwards to the next lattice point (a 2.3 % step);
`lower` is 0.0 and `upper` math.inf when nothing is excluded on that side (JSON: null).

Latency (`LatencyTest`): the same test where an "error" is an answer slower than tau, the
champion's `quantile` of latency, fixed once from champion answers seen before the test
starts (the constructor's `champion_counts`, or the first intervals' champion histograms
until `warmup_answers` answers, which then take no part in the test) and snapped down to
the edge of the SPEC 4 histogram bucket holding that quantile (so at least 1 - q of the
champion's answers are slower than tau: more events, more power). psi is then the ratio
of the two variants' chances of being slower than tau.

SRM (`SrmTest`): the Dirichlet-multinomial Bayes factor of Lindon & Malek against the
allocation p0: with counts x (n in all) since the segment began and a Dirichlet(c p0) prior,
    log M = log G(c) - log G(c + n) + sum_i [log G(c p0_i + x_i) - log G(c p0_i)] - sum_i x_i log p0_i.
The Bayes factor of an ordered sequence depends only on its counts, so per-interval counts
lose nothing. `new_segment(shares)` starts a factor for a new allocation; the evidence is the
product of the segments' factors (each one a martingale from 1 given the past), so it keeps
accumulating across weight changes without ever pooling counts of two allocations.

Interface (what the judge uses):
- `Interval(challenger_requests, champion_requests, challenger_errors, champion_errors)`
- `ErrorRateTest(alpha)`: `.update(interval)`, `.statistic` (log M_t), `.threshold`
  (log(1/alpha)), `.e_value` (M_t, capped at 1e300), `.max_statistic`, `.rejected` (sticky:
  once max_s log M_s >= log(1/alpha)), `.p_value` (min(1, 1/max_s M_s)), `.estimate`
  (None before any error), `.confidence_interval`, `.intervals` (how many), `.series`
  (the per-interval counts that moved the statistic, the zero-error intervals left out:
  they change nothing), `.to_json(include_series=False)`.
- `replay(intervals, alpha) -> ErrorRateTest`; `replay_evidence(evidence) -> test` rebuilds
  any of the three tests from its `to_json(include_series=True)` and gives the same decision.
- `LatencyTest(alpha, quantile, champion_counts=None, warmup_answers=None,
  bucket_edges_ms=LATENCY_BUCKETS_MS)` (tsplit.status's, SPEC section 4's; the records carry them as
  `latency_buckets_ms`): `.update(challenger_counts_delta, champion_counts_delta)`
  (histogram deltas, one count per edge plus the overflow),
  `.ready`, `.latency_threshold_ms`, and the same `.rejected`, `.p_value`, `.statistic`,
  `.threshold`, `.estimate`, `.confidence_interval`, `.to_json()` as ErrorRateTest
  (before `.ready`: not rejected, p-value 1, estimate None).
- `SrmTest(expected_shares, alpha=0.001)`: `.update(counts)`, `.new_segment(shares)`,
  `.statistic`, `.threshold`, `.rejected`, `.p_value`, `.observed_shares`, `.to_json()`.
- `conditional_log_lr(n_c, n_b, e_c, e_b, log_psi)`: the vectorised per-interval term, for
  the simulation (bench/guardrails_sim.py) and anything else that needs the same formula;
  `dirichlet_multinomial_log_bf(counts, expected_shares, concentration)` likewise for SRM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, logsumexp

from tsplit.status import LATENCY_BUCKETS_MS

LOG_PSI_STEP = math.log(10.0) / 100.0  # lattice step in log psi: 100 points a decade
_LATTICE_K = np.arange(-300, 301)  # psi from 1e-3 to 1e3
LATTICE_LOG_PSI = _LATTICE_K * LOG_PSI_STEP
LATTICE_PSI = np.exp(LATTICE_LOG_PSI)
_ZERO = 300  # index of psi = 1 in the lattice
_ALT_K = np.arange(6, 101, 2)  # psi_j = 10**(k/100): 1.148 .. 10, 48 points
ALTERNATIVE_PSI = np.exp(_ALT_K * LOG_PSI_STEP)
_ALT_LOG_WEIGHTS = np.full(len(_ALT_K), -math.log(len(_ALT_K)))
ALTERNATIVE_WEIGHTS = np.exp(_ALT_LOG_WEIGHTS)
_CS_K = np.arange(-200, 201)  # candidate psi0 of the confidence sequence: 0.01 .. 100
CS_PSI = np.exp(_CS_K * LOG_PSI_STEP)
_CS_UP = (_CS_K[:, None] + _ALT_K[None, :]) + _ZERO  # lattice index of psi0 * psi_j
_CS_DOWN = (_CS_K[:, None] - _ALT_K[None, :]) + _ZERO  # lattice index of psi0 / psi_j

SRM_ALPHA = 0.001
SRM_CONCENTRATION = 1000.0  # Dirichlet(c * p0): a share's prior sd ~ sqrt(p(1-p)/c)
_E_VALUE_CAP = 1e300


def conditional_log_lr(n_c, n_b, e_c, e_b, log_psi) -> np.ndarray:
    """Each interval's conditional log-likelihood ratio, psi against 1, at every log_psi.

    The counts broadcast together to a shape S, log_psi is 1-d (K,); the answer has shape
    S + (K,). With r = n_c / n_b, q(psi) = psi r / (1 + psi r) and the term is
    e_c log psi - (e_c + e_b) [log(1 + psi r) - log(1 + r)]. An interval where either
    variant had no requests carries no information (0).
    """
    n_c, n_b, e_c, e_b = (np.asarray(v, dtype=float)[..., None] for v in (n_c, n_b, e_c, e_b))
    log_psi = np.asarray(log_psi, dtype=float)
    informative = (n_c > 0) & (n_b > 0)
    # r and psi r stay within [1e-12, 1e12] for counts below 1e9 and psi in [1e-3, 1e3]:
    # log1p is exact enough there, and cheaper than logaddexp(0, log psi + log r).
    r = np.where(informative, n_c, 1.0) / np.where(informative, n_b, 1.0)
    term = e_c * log_psi - (e_c + e_b) * (np.log1p(np.exp(log_psi) * r) - np.log1p(r))
    return np.where(informative, term, 0.0)


def dirichlet_multinomial_log_bf(counts, expected_shares, concentration: float = SRM_CONCENTRATION) -> np.ndarray:
    """log Bayes factor of Dirichlet(c p0)-multinomial against multinomial(p0), over the last axis.

    counts (..., k) are the counts since the segment began; 0 for no counts.
    """
    x = np.asarray(counts, dtype=float)
    p0 = np.asarray(expected_shares, dtype=float)
    a = concentration * p0
    n = x.sum(axis=-1)
    return (gammaln(concentration) - gammaln(concentration + n)
            + np.sum(gammaln(a + x) - gammaln(a), axis=-1) - np.sum(x * np.log(p0), axis=-1))


@dataclass(frozen=True)
class Interval:
    """One interval's counter deltas (requests and errors of both variants), one weight setting."""

    challenger_requests: int
    champion_requests: int
    challenger_errors: int
    champion_errors: int

    def __post_init__(self) -> None:
        for name in ("challenger_requests", "champion_requests", "challenger_errors", "champion_errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.challenger_errors > self.challenger_requests:
            raise ValueError("challenger_errors exceeds challenger_requests")
        if self.champion_errors > self.champion_requests:
            raise ValueError("champion_errors exceeds champion_requests")

    def as_list(self) -> list[int]:
        return [int(self.challenger_requests), int(self.champion_requests), int(self.challenger_errors), int(self.champion_errors)]

    @classmethod
    def from_list(cls, row: Sequence[int]) -> Interval:
        n_c, n_b, e_c, e_b = (int(v) for v in row)
        return cls(n_c, n_b, e_c, e_b)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _json_float(value: float | None) -> float | None:
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return float(value)


class _AlwaysValidTest:
    """What every test reads the same way from alpha and its running max of log M."""

    alpha: float
    _max_log_m: float

    @property
    def max_statistic(self) -> float:
        """max_s log M_s (0 before any evidence)."""
        return self._max_log_m

    @property
    def threshold(self) -> float:
        """log(1/alpha): rejected once the statistic has reached it."""
        return math.log(1.0 / self.alpha)

    @property
    def rejected(self) -> bool:
        """Sticky: once max_s log M_s >= log(1/alpha), whatever M does after."""
        return self._max_log_m >= self.threshold

    @property
    def p_value(self) -> float:
        """Always-valid: min(1, 1 / max_s M_s)."""
        return min(1.0, math.exp(-self._max_log_m))

    def _decision_json(self) -> dict:
        return {"test": self.kind, "alpha": self.alpha, "statistic": self.statistic, "statistic_is": "log_e_value",
                "threshold": self.threshold, "max_statistic": self.max_statistic, "p_value": self.p_value,
                "rejected": self.rejected, "intervals": self.intervals}


class ErrorRateTest(_AlwaysValidTest):
    """The conditional mixture likelihood-ratio test of psi = p_challenger / p_champion <= 1."""

    kind = "error_rate"

    def __init__(self, alpha: float):
        self.alpha = _check_alpha(alpha)
        self._log_lr = np.zeros(len(LATTICE_LOG_PSI))  # lambda_t on the lattice
        self._log_m = 0.0
        self._max_log_m = 0.0
        self.intervals = 0
        self.challenger_requests = 0
        self.champion_requests = 0
        self.challenger_errors = 0
        self.champion_errors = 0
        self._series: list[list[int]] = []
        self._cs: tuple[float, float] | None = None

    # -- feeding ---------------------------------------------------------------------------------
    def update(self, interval: Interval) -> None:
        self.intervals += 1
        self.challenger_requests += interval.challenger_requests
        self.champion_requests += interval.champion_requests
        self.challenger_errors += interval.challenger_errors
        self.champion_errors += interval.champion_errors
        n_c, n_b = interval.challenger_requests, interval.champion_requests
        e_c, e_b = interval.challenger_errors, interval.champion_errors
        if e_c + e_b == 0 or n_c == 0 or n_b == 0:
            return  # the likelihood ratio of this interval is 1 for every psi
        self._series.append(interval.as_list())
        self._log_lr += conditional_log_lr(n_c, n_b, e_c, e_b, LATTICE_LOG_PSI)
        self._log_m = float(logsumexp(_ALT_LOG_WEIGHTS + self._log_lr[_ALT_K + _ZERO]))
        self._max_log_m = max(self._max_log_m, self._log_m)
        self._cs = None

    # -- reading ---------------------------------------------------------------------------------
    @property
    def statistic(self) -> float:
        """log M_t."""
        return self._log_m

    @property
    def e_value(self) -> float:
        return min(math.exp(min(self._log_m, 700.0)), _E_VALUE_CAP)

    @property
    def estimate(self) -> float | None:
        """The conditional MLE of psi (None before any error; clamped to the lattice's ends)."""
        if not self._series:
            return None
        lam = self._log_lr
        i = int(np.argmax(lam))
        if 0 < i < len(lam) - 1:
            left, mid, right = lam[i - 1], lam[i], lam[i + 1]
            curvature = left - 2.0 * mid + right
            shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            return float(math.exp(LATTICE_LOG_PSI[i] + max(-0.5, min(0.5, shift)) * LOG_PSI_STEP))
        return float(LATTICE_PSI[i])

    @property
    def confidence_interval(self) -> tuple[float, float]:
        """(lower, upper) always-valid bounds on psi; (0.0, inf) before any evidence."""
        if self._cs is None:
            self._cs = self._compute_cs()
        return self._cs

    def _compute_cs(self) -> tuple[float, float]:
        lam = self._log_lr
        if not self._series:
            return (0.0, math.inf)
        base = lam[_CS_K + _ZERO]
        up = logsumexp(_ALT_LOG_WEIGHTS[None, :] + lam[_CS_UP], axis=1) - base
        down = logsumexp(_ALT_LOG_WEIGHTS[None, :] + lam[_CS_DOWN], axis=1) - base
        cut = self.threshold
        kept_low = np.flatnonzero(up < cut)
        kept_high = np.flatnonzero(down < cut)
        if len(kept_low) == 0:
            lower = float(CS_PSI[-1])
        else:
            first = int(kept_low[0])
            lower = float(CS_PSI[first - 1]) if first > 0 else 0.0
        if len(kept_high) == 0:
            upper = float(CS_PSI[0])
        else:
            last = int(kept_high[-1])
            upper = float(CS_PSI[last + 1]) if last < len(CS_PSI) - 1 else math.inf
        return (lower, upper)

    @property
    def series(self) -> list[list[int]]:
        """[n_c, n_b, e_c, e_b] of every interval that moved the statistic, in order."""
        return [list(row) for row in self._series]

    def to_json(self, include_series: bool = False) -> dict:
        lower, upper = self.confidence_interval
        out = {
            **self._decision_json(),
            "e_value": self.e_value,
            "challenger": {"requests": self.challenger_requests, "errors": self.challenger_errors},
            "champion": {"requests": self.champion_requests, "errors": self.champion_errors},
            "estimate": _json_float(self.estimate),
            "confidence_interval": [_json_float(lower), _json_float(upper)],
        }
        if include_series:
            out["series"] = self.series
        return out


def replay(intervals: Iterable[Interval | Sequence[int]], alpha: float) -> ErrorRateTest:
    """Rebuild an ErrorRateTest from a stored per-interval series ([n_c, n_b, e_c, e_b] rows)."""
    test = ErrorRateTest(alpha)
    for row in intervals:
        test.update(row if isinstance(row, Interval) else Interval.from_list(row))
    return test


def snapped_latency_threshold(champion_counts: Sequence[int], quantile: float) -> int:
    """Index k of the bucket edge tau = edges[k] that the champion's q-quantile snaps to.

    The quantile falls in one bucket; tau is one of its two edges (the first edge when it
    falls in the first bucket, the last when in the overflow). Of the two, tau is the edge
    at which a challenger one bucket slower than the champion would differ most from it:
    the larger Kullback-Leibler divergence per answer between the two chances of an answer
    slower than the edge. The lower edge usually wins (a lognormal champion's tail beyond
    it is a few times 1 - q); the upper one when nearly all the champion's answers share
    the quantile's bucket, where beyond the lower edge both variants would be ~100 % slow.
    """
    counts = np.asarray(champion_counts, dtype=float)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError("a latency histogram has one count per bucket edge and one for the overflow")
    total = counts.sum()
    if total <= 0:
        raise ValueError("the champion's histogram is empty")
    cumulative = np.cumsum(counts[:-1])  # answers at or below each edge
    below = np.flatnonzero(cumulative <= (quantile + 1e-12) * total)
    if not len(below):
        return 0
    lower = int(below[-1])
    if lower + 1 == len(cumulative):
        return lower
    # Chance of an answer beyond each edge, with half an answer either side so none is 0 or 1.
    beyond = (np.concatenate([[total], total - cumulative]) + 0.5) / (total + 1.0)

    def divergence(k: int) -> float:  # edge k: the champion beyond it vs one bucket slower
        p, b = beyond[k], beyond[k + 1]
        return p * math.log(p / b) + (1 - p) * math.log((1 - p) / (1 - b))

    return lower if divergence(lower) >= divergence(lower + 1) else lower + 1


class LatencyTest:
    """ErrorRateTest on answers slower than the champion's snapped q-quantile."""

    kind = "latency"

    def __init__(
        self,
        alpha: float,
        quantile: float,
        champion_counts: Sequence[int] | None = None,
        warmup_answers: int | None = None,
        bucket_edges_ms: Sequence[float] = LATENCY_BUCKETS_MS,
    ):
        self.alpha = _check_alpha(alpha)
        quantile = float(quantile)
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.quantile = quantile
        self.bucket_edges_ms = tuple(float(e) for e in bucket_edges_ms)
        if not self.bucket_edges_ms or list(self.bucket_edges_ms) != sorted(set(self.bucket_edges_ms)):
            raise ValueError("bucket_edges_ms must be increasing")
        self.warmup_answers = int(warmup_answers) if warmup_answers is not None else max(100, math.ceil(10.0 / (1.0 - quantile) - 1e-9))
        self._warmup = np.zeros(len(self.bucket_edges_ms) + 1, dtype=np.int64)
        self.edge_index: int | None = None
        self._test = ErrorRateTest(alpha)
        if champion_counts is not None:
            self._absorb_warmup(champion_counts)

    def _absorb_warmup(self, champion_counts: Sequence[int]) -> None:
        counts = self._histogram(champion_counts)
        self._warmup += counts
        if self._warmup.sum() >= self.warmup_answers:
            self.edge_index = snapped_latency_threshold(self._warmup, self.quantile)

    @property
    def ready(self) -> bool:
        return self.edge_index is not None

    @property
    def latency_threshold_ms(self) -> float | None:
        return None if self.edge_index is None else self.bucket_edges_ms[self.edge_index]

    @property
    def warmup_counts(self) -> list[int]:
        return [int(v) for v in self._warmup]

    def slow_interval(self, challenger_counts: Sequence[int], champion_counts: Sequence[int]) -> Interval:
        """The interval of (answers, answers slower than tau) of both variants."""
        assert self.edge_index is not None
        chal, champ = self._histogram(challenger_counts), self._histogram(champion_counts)
        k = self.edge_index + 1  # buckets above tau: (edge_k, edge_k+1], ..., overflow
        return Interval(int(chal.sum()), int(champ.sum()), int(chal[k:].sum()), int(champ[k:].sum()))

    def update(self, challenger_counts_delta: Sequence[int], champion_counts_delta: Sequence[int]) -> None:
        if self.edge_index is None:
            self._histogram(challenger_counts_delta)  # validated, not tested: taken before tau is fixed
            self._absorb_warmup(champion_counts_delta)
            return
        self._test.update(self.slow_interval(challenger_counts_delta, champion_counts_delta))

    statistic = property(lambda self: self._test.statistic)
    max_statistic = property(lambda self: self._test.max_statistic)
    threshold = property(lambda self: self._test.threshold)
    e_value = property(lambda self: self._test.e_value)
    rejected = property(lambda self: self._test.rejected)
    p_value = property(lambda self: self._test.p_value)
    estimate = property(lambda self: self._test.estimate)
    confidence_interval = property(lambda self: self._test.confidence_interval)
    intervals = property(lambda self: self._test.intervals)
    series = property(lambda self: self._test.series)

    def to_json(self, include_series: bool = False) -> dict:
        out = self._test.to_json(include_series=include_series)
        out["test"] = self.kind
        out["quantile"] = self.quantile
        out["latency_threshold_ms"] = self.latency_threshold_ms
        out["warmup_counts"] = self.warmup_counts
        out["warmup_answers"] = self.warmup_answers
        out["bucket_edges_ms"] = list(self.bucket_edges_ms)
        out["challenger"]["slow"] = out["challenger"].pop("errors")
        out["champion"]["slow"] = out["champion"].pop("errors")
        return out

    def _histogram(self, counts: Sequence[int]) -> np.ndarray:
        arr = np.asarray(counts)
        if arr.shape != (len(self.bucket_edges_ms) + 1,):
            raise ValueError(f"a latency histogram has {len(self.bucket_edges_ms) + 1} counts, got shape {arr.shape}")
        if arr.dtype.kind not in "iu" or (arr < 0).any():
            raise ValueError("histogram counts must be non-negative integers")
        return arr.astype(np.int64)


class SrmTest(_AlwaysValidTest):
    """Sequential Dirichlet-multinomial test of request shares against the allocation."""

    kind = "srm"

    def __init__(self, expected_shares: Sequence[float], alpha: float = SRM_ALPHA, concentration: float = SRM_CONCENTRATION):
        self.alpha = _check_alpha(alpha)
        if concentration <= 0:
            raise ValueError("concentration must be positive")
        self.concentration = float(concentration)
        self._closed_log_m = 0.0  # sum of the finished segments' log factors
        self._max_log_m = 0.0
        self.segments = 0
        self.intervals = 0
        self._series: list[dict] = []
        self._start_segment(expected_shares)

    def _start_segment(self, expected_shares: Sequence[float]) -> None:
        shares = np.asarray(expected_shares, dtype=float)
        if shares.ndim != 1 or len(shares) < 2 or (shares <= 0).any() or not np.isfinite(shares).all():
            raise ValueError("expected_shares must be at least two positive numbers")
        self.expected_shares = shares / shares.sum()
        self._prior = self.concentration * self.expected_shares
        self.counts = np.zeros(len(shares), dtype=np.int64)
        self.segments += 1
        self._series.append({"expected_shares": [float(v) for v in self.expected_shares], "counts": []})

    def new_segment(self, expected_shares: Sequence[float]) -> None:
        """A new allocation: close the running factor (its evidence stays) and start another."""
        self._closed_log_m += self._segment_log_m()
        self._start_segment(expected_shares)

    def _segment_log_m(self) -> float:
        return float(dirichlet_multinomial_log_bf(self.counts, self.expected_shares, self.concentration))

    def update(self, counts: Sequence[int]) -> None:
        arr = np.asarray(counts)
        if arr.shape != self.counts.shape or arr.dtype.kind not in "iu" or (arr < 0).any():
            raise ValueError(f"counts must be {len(self.counts)} non-negative integers")
        self.intervals += 1
        if arr.sum() == 0:
            return
        self.counts += arr.astype(np.int64)
        self._series[-1]["counts"].append([int(v) for v in arr])
        self._max_log_m = max(self._max_log_m, self.statistic)

    @property
    def statistic(self) -> float:
        """log M_t: the log Bayes factor of every segment so far."""
        return self._closed_log_m + self._segment_log_m()


    @property
    def observed_shares(self) -> list[float] | None:
        n = self.counts.sum()
        return None if n == 0 else [float(v) for v in self.counts / n]

    def to_json(self, include_series: bool = False) -> dict:
        out = {
            **self._decision_json(),
            "segments": self.segments,
            "concentration": self.concentration,
            "counts": [int(v) for v in self.counts],
            "expected_shares": [float(v) for v in self.expected_shares],
            "observed_shares": self.observed_shares,
        }
        if include_series:
            out["series"] = [{"expected_shares": s["expected_shares"], "counts": [list(c) for c in s["counts"]]} for s in self._series]
        return out


def replay_evidence(evidence: dict) -> ErrorRateTest | LatencyTest | SrmTest:
    """Rebuild a test from its `to_json(include_series=True)`; the result decides the same."""
    kind = evidence.get("test")
    if "series" not in evidence:
        raise ValueError("evidence without its series cannot be replayed")
    if kind == ErrorRateTest.kind:
        return replay(evidence["series"], evidence["alpha"])
    if kind == LatencyTest.kind:
        test = LatencyTest(evidence["alpha"], evidence["quantile"], evidence["warmup_counts"], evidence["warmup_answers"],
                           evidence["bucket_edges_ms"])
        for row in evidence["series"]:
            test._test.update(Interval.from_list(row))
        return test
    if kind == SrmTest.kind:
        segments = evidence["series"]
        test = SrmTest(segments[0]["expected_shares"], evidence["alpha"], evidence["concentration"])
        for i, segment in enumerate(segments):
            if i:
                test.new_segment(segment["expected_shares"])
            for counts in segment["counts"]:
                test.update(counts)
        return test
    raise ValueError(f"unknown test {kind!r}")
