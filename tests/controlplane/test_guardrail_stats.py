"""The guardrails' always-valid tests (controlplane/guardrails/stats.py): known values, the A/A
bound on a small seeded simulation, detection, replay, and properties."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import guardrails_sim as sim
from controlplane.guardrails import stats
from controlplane.guardrails.stats import ErrorRateTest, Interval, LatencyTest, SrmTest


def _mixture_by_hand(intervals: list[tuple[int, int, int, int]]) -> float:
    """log M_t written out term by term in pure Python, from the issue's formula."""
    total = 0.0
    for psi, weight in zip(stats.ALTERNATIVE_PSI, stats.ALTERNATIVE_WEIGHTS):
        product = 1.0
        for n_c, n_b, e_c, e_b in intervals:
            q1 = n_c / (n_c + n_b)
            q = psi * n_c / (psi * n_c + n_b)
            product *= (q / q1) ** e_c * ((1 - q) / (1 - q1)) ** e_b
        total += weight * product
    return math.log(total)


def test_interval_term_matches_hand_computed_values():
    # 50/50, two challenger errors: q(1) = 1/2, q(2) = 2/3, LR = (4/3)^2.
    assert stats.conditional_log_lr(100, 100, 2, 0, [math.log(2)])[0] == pytest.approx(2 * math.log(4 / 3))
    # 10/90, one challenger and two champion errors, psi = 3: q(1) = 0.1, q(3) = 0.25,
    # LR = 2.5 * (0.75 / 0.9)^2 = 1.736111...
    assert math.exp(stats.conditional_log_lr(10, 90, 1, 2, [math.log(3)])[0]) == pytest.approx(1.7361111111)


def test_statistic_is_the_log_of_the_weighted_mixture_over_intervals():
    rows = [(10, 90, 1, 2), (20, 80, 0, 1), (50, 50, 3, 1)]
    test = ErrorRateTest(0.01)
    for row in rows:
        test.update(Interval(*row))
    assert test.statistic == pytest.approx(_mixture_by_hand(rows), rel=1e-9)
    assert test.threshold == pytest.approx(math.log(100))
    assert test.p_value == pytest.approx(min(1.0, math.exp(-test.max_statistic)))
    assert stats.ALTERNATIVE_PSI[0] >= 1.1 and stats.ALTERNATIVE_PSI[-1] == pytest.approx(10.0)
    assert stats.ALTERNATIVE_WEIGHTS.sum() == pytest.approx(1.0)


def test_intervals_without_errors_or_without_one_variant_leave_the_statistic_alone():
    test = ErrorRateTest(0.01)
    test.update(Interval(10, 90, 0, 0))
    test.update(Interval(0, 100, 0, 5))
    test.update(Interval(100, 0, 5, 0))
    assert test.statistic == 0.0 and test.p_value == 1.0 and not test.rejected
    assert test.estimate is None and test.confidence_interval == (0.0, math.inf)
    assert test.to_json()["challenger"] == {"requests": 110, "errors": 5}
    assert test.to_json()["confidence_interval"] == [0.0, None]


@pytest.mark.parametrize("row", [(-1, 10, 0, 0), (10, 10, 11, 0), (10, 10, 0, 11), (1.5, 10, 0, 0), (True, 1, 0, 0)])
def test_impossible_intervals_are_refused(row):
    with pytest.raises(ValueError):
        Interval(*row)


def test_alpha_outside_zero_one_is_refused():
    for alpha in (0, 1, -0.1, 2):
        with pytest.raises(ValueError):
            ErrorRateTest(alpha)


def test_aa_false_rollbacks_stay_below_alpha_where_a_naive_z_test_does_not():
    # 400 runs, 10/90 at 100 req/s with a look every second for 8 minutes, and the
    # ramp-plus-drift scenario. Under the null the mixture fires in at most alpha = 1 % of
    # runs (Ville); 400 * 0.01 = 4, and more than 12 has a chance below 1e-3 under
    # Binomial(400, 0.01).
    for scenario in sim.aa_scenarios(seconds=480, rate=100):
        scenario = dataclasses.replace(scenario, methods=("mixture",))
        res = sim.simulate_counts(scenario, 400, np.random.default_rng(7))["first_second"]
        assert (res["mixture"] >= 0).sum() <= 12, scenario.name
    stationary = dataclasses.replace(sim.aa_scenarios(seconds=480, rate=100)[0], methods=("ztest",))
    res = sim.simulate_counts(stationary, 400, np.random.default_rng(8))["first_second"]
    assert (res["ztest"] >= 0).sum() > 20  # > 5 %: repeated looks at a fixed level inflate it


def test_a_fivefold_error_rate_is_detected_with_an_interval_above_one():
    rng = np.random.default_rng(11)
    test = ErrorRateTest(0.01)
    for _ in range(600):
        n_c = int(rng.binomial(100, 0.1))
        test.update(Interval(n_c, 100 - n_c, int(rng.binomial(n_c, 0.05)), int(rng.binomial(100 - n_c, 0.01))))
        if test.rejected:
            break
    assert test.rejected and test.challenger_requests < 2000
    lower, upper = test.confidence_interval
    assert 1.0 <= lower < test.estimate < upper
    assert test.p_value <= 0.01
    evidence = test.to_json()
    assert evidence["statistic"] >= evidence["threshold"] and evidence["rejected"] is True


def test_an_equal_challenger_keeps_one_inside_its_interval():
    rng = np.random.default_rng(12)
    test = ErrorRateTest(0.01)
    for _ in range(300):
        n_c = int(rng.binomial(100, 0.3))
        test.update(Interval(n_c, 100 - n_c, int(rng.binomial(n_c, 0.02)), int(rng.binomial(100 - n_c, 0.02))))
    lower, upper = test.confidence_interval
    assert not test.rejected and lower < 1.0 < upper
    assert 0.5 < test.estimate < 2.0


def test_replay_of_the_stored_series_reproduces_the_decision():
    rng = np.random.default_rng(13)
    test = ErrorRateTest(0.01)
    shares = [0.05] * 100 + [0.10] * 100 + [0.20] * 200
    for share in shares:
        n_c = int(rng.binomial(100, share))
        test.update(Interval(n_c, 100 - n_c, int(rng.binomial(n_c, 0.03)), int(rng.binomial(100 - n_c, 0.01))))
        if test.rejected:
            break
    assert test.rejected
    evidence = json.loads(json.dumps(test.to_json(include_series=True)))
    again = stats.replay_evidence(evidence)
    assert again.rejected and again.statistic == pytest.approx(test.statistic, rel=1e-12)
    assert again.confidence_interval == test.confidence_interval
    assert stats.replay(evidence["series"], evidence["alpha"]).to_json()["statistic"] == evidence["statistic"]


def test_latency_threshold_snaps_to_the_lower_edge_of_the_quantiles_bucket_under_a_spread_champion():
    # Lognormal, median 20 ms, sigma 0.5: the 0.99 quantile (64 ms) is in (50, 100] ms, with
    # 3.4 % of the answers beyond 50 ms and 0.1 % beyond 100 ms.
    counts = [0, 0, 3, 80, 417, 467, 33, 1, 0, 0, 0, 0, 0]
    assert stats.snapped_latency_threshold(counts, 0.99) == 5  # tau = 50 ms
    assert stats.snapped_latency_threshold([1000] + [0] * 12, 0.99) == 0  # first bucket: the first edge
    assert stats.snapped_latency_threshold([0] * 12 + [5], 0.5) == 11  # overflow: the last edge
    with pytest.raises(ValueError):
        stats.snapped_latency_threshold([0] * 13, 0.99)


def test_latency_threshold_snaps_to_the_upper_edge_when_the_champions_answers_share_the_quantiles_bucket():
    # 97 % of the answers in (2, 5] ms: beyond 2 ms a challenger however slow could not look
    # slower than the champion (97 % against 100 %); beyond 5 ms it is 1 % against 100 %.
    counts = [2, 14, 1308, 15, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert stats.snapped_latency_threshold(counts, 0.9) == 2  # tau = 5 ms
    test = LatencyTest(0.01, 0.9, champion_counts=counts)
    slow = [0] * 9 + [10] + [0] * 3  # ten answers at (500, 1000] ms a second
    champion = [0, 1, 85, 1] + [0] * 9
    for second in range(1, 30):
        test.update(slow, champion)
        if test.rejected:
            break
    assert test.rejected and second <= 5, second


def _histograms(rng, n, median, sigma):
    probs = sim.LatencyModel(median, sigma).bucket_probs()
    return [int(v) for v in rng.multinomial(n, probs)]


def test_latency_test_warms_up_on_the_champion_then_detects_a_slower_challenger():
    rng = np.random.default_rng(14)
    test = LatencyTest(0.01, 0.99)
    assert test.warmup_answers == 1000
    seconds = 0
    while not test.ready:
        test.update(_histograms(rng, 10, 20, 0.5), _histograms(rng, 90, 20, 0.5))
        seconds += 1
    assert seconds == 12 and test.latency_threshold_ms == 50.0 and test.intervals == 0
    for _ in range(2000):
        test.update(_histograms(rng, 10, 30, 0.5), _histograms(rng, 90, 20, 0.5))  # 1.5x slower
        if test.rejected:
            break
    assert test.rejected and test.estimate > 1.0
    evidence = json.loads(json.dumps(test.to_json(include_series=True)))
    assert evidence["test"] == "latency" and evidence["latency_threshold_ms"] == 50.0
    assert "slow" in evidence["challenger"]
    again = stats.replay_evidence(evidence)
    assert again.rejected and again.statistic == pytest.approx(test.statistic, rel=1e-12)


def test_latency_test_with_the_champion_histogram_given_is_ready_at_once():
    # Half at most 20 ms, 90 % at most 50 ms: the 0.9 quantile is 50 ms, an edge.
    test = LatencyTest(0.01, 0.9, champion_counts=[0, 0, 0, 0, 50, 40, 10, 0, 0, 0, 0, 0, 0])
    assert test.ready and test.latency_threshold_ms == 50.0
    with pytest.raises(ValueError):
        test.update([1] * 12, [1] * 13)
    other = LatencyTest(0.01, 0.5, champion_counts=[0, 60, 40, 0], bucket_edges_ms=(5, 10, 20))
    assert other.latency_threshold_ms == 10.0  # beyond 5 ms is every answer: no room to be slower


def test_srm_factor_matches_hand_computed_dirichlet_value():
    # Two variants at 1/2 each, two requests both to the first: BF = E[p^2] / (1/4) with
    # p ~ Beta(c/2, c/2), i.e. (c + 2) / (c + 1).
    c = stats.SRM_CONCENTRATION
    test = SrmTest([0.5, 0.5])
    test.update([2, 0])
    assert test.statistic == pytest.approx(math.log((c + 2) / (c + 1)))
    assert test.threshold == pytest.approx(math.log(1000)) and test.alpha == 0.001


def test_srm_detects_nine_against_ten_percent_and_not_ten_against_ten():
    rng = np.random.default_rng(15)
    bad, good = SrmTest([0.1, 0.9]), SrmTest([0.1, 0.9])
    for _ in range(600):
        c = int(rng.binomial(100, 0.09))
        bad.update([c, 100 - c])
        c = int(rng.binomial(100, 0.10))
        good.update([c, 100 - c])
    assert bad.rejected and bad.p_value <= 0.001
    assert not good.rejected and good.p_value > 0.001
    assert abs(bad.observed_shares[0] - 0.09) < 0.01


def test_srm_evidence_carries_over_a_new_allocation_and_replays():
    rng = np.random.default_rng(16)
    test = SrmTest([0.1, 0.9])
    for _ in range(100):
        c = int(rng.binomial(100, 0.08))
        test.update([c, 100 - c])
    before = test.statistic
    test.new_segment([0.2, 0.8])
    assert test.statistic == pytest.approx(before) and test.counts.sum() == 0
    for _ in range(100):
        c = int(rng.binomial(100, 0.16))
        test.update([c, 100 - c])
    assert test.segments == 2 and test.statistic > before
    again = stats.replay_evidence(json.loads(json.dumps(test.to_json(include_series=True))))
    assert again.statistic == pytest.approx(test.statistic) and again.rejected == test.rejected
    with pytest.raises(ValueError):
        SrmTest([0.0, 1.0])


counts = st.integers(min_value=0, max_value=500)


@st.composite
def intervals(draw):
    n_c, n_b = draw(counts), draw(counts)
    return Interval(n_c, n_b, draw(st.integers(0, n_c)), draw(st.integers(0, n_b)))


@settings(max_examples=60, deadline=None)
@given(st.lists(intervals(), min_size=1, max_size=8))
def test_statistic_and_p_value_stay_in_range(rows):
    test = ErrorRateTest(0.05)
    for row in rows:
        test.update(row)
    assert math.isfinite(test.statistic) and test.e_value >= 0.0
    assert 0.0 <= test.p_value <= 1.0
    lower, upper = test.confidence_interval
    assert 0.0 <= lower <= upper


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.data())
def test_more_challenger_errors_never_lower_the_statistic(n_c, n_b, data):
    e_b = data.draw(st.integers(0, n_b))
    e_c = data.draw(st.integers(0, n_c - 1))
    fewer, more = ErrorRateTest(0.01), ErrorRateTest(0.01)
    fewer.update(Interval(n_c, n_b, e_c, e_b))
    more.update(Interval(n_c, n_b, e_c + 1, e_b))
    assert more.statistic >= fewer.statistic - 1e-12
    assert more.p_value <= fewer.p_value + 1e-12
