"""The judge's pure parts with fake router records: per-interval deltas, router restarts,
the counts each mode compares, and the decisions (rollback, step, none, SRM)."""

from __future__ import annotations

import random

from controlplane.guardrails.deltas import N_BUCKETS, CounterDeltas
from controlplane.guardrails.judge import ROLLBACK, STEP, DeploymentWatch, JudgeSettings, decision_mutation
from controlplane.guardrails.stats import replay_evidence
from tsplit.errors import ApiError
from tsplit.resources import Challenger, Deployment, GuardrailPolicy, Model
from tsplit.status import latency_bucket


def row(requests=0, errors=0, failovers=0, latency_ms=1.0, **extra):
    buckets = [0] * N_BUCKETS
    buckets[latency_bucket(latency_ms)] = requests
    return {"requests": requests, "errors": errors, "failovers": failovers, "latency_buckets": buckets, **extra}


def record(router_id, stats, started_at="t0"):
    return {"router_id": router_id, "started_at": started_at, "stats": stats}


def test_deltas_are_summed_across_routers_and_a_first_sight_is_a_baseline():
    deltas = CounterDeltas()
    assert deltas.tick([record("r-1", {"dep_x": {"champion": row(100, 1)}})]) == {}
    out = deltas.tick([record("r-1", {"dep_x": {"champion": row(150, 3)}}),
                       record("r-2", {"dep_x": {"champion": row(40)}})])  # r-2: new, a baseline
    assert (out["dep_x"]["champion"].requests, out["dep_x"]["champion"].errors) == (50, 2)
    out = deltas.tick([record("r-1", {"dep_x": {"champion": row(160, 3), "ch_a": row(5, 1)}}),
                       record("r-2", {"dep_x": {"champion": row(50)}})])
    assert out["dep_x"]["champion"].requests == 20
    assert out["dep_x"]["champion"].latency_buckets[latency_bucket(1.0)] == 20
    assert (out["dep_x"]["ch_a"].requests, out["dep_x"]["ch_a"].errors) == (5, 1)  # a new row: all new


def test_a_router_restart_is_a_new_baseline_never_a_negative_delta():
    deltas = CounterDeltas()
    deltas.tick([record("r-1", {"dep_x": {"champion": row(1000)}})])
    # Same id, counters down (restarted between two reads): no delta, new baseline.
    assert deltas.tick([record("r-1", {"dep_x": {"champion": row(10)}})]) == {}
    assert deltas.resets == 1
    assert deltas.tick([record("r-1", {"dep_x": {"champion": row(30)}})])["dep_x"]["champion"].requests == 20
    # A new started_at (restarted and already past its old counts) is a restart too.
    assert deltas.tick([record("r-1", {"dep_x": {"champion": row(5000)}}, started_at="t1")]) == {}
    assert deltas.resets == 2


def _deployment(pct=10, policy=None, version=5, shadow=False):
    policy = policy or GuardrailPolicy(latency_quantile=None, steps_bp=(1000, 2500), step_after_requests=500)
    return Deployment("dep_x", "org_1", "mod_a", (Challenger("ch_a", "mod_b", pct * 100),), shadow_mode=shadow,
                      cache_version=version, guardrails=policy)


def _run(watch, deployment, ticks, p_champion, p_challenger, rng, per_tick=200):
    """Feed ticks of simulated deltas; the first decision or None."""
    deltas = CounterDeltas()
    totals = {"champion": [0, 0], "ch_a": [0, 0]}
    share = deployment.challenger_bp / 10_000
    for _ in range(ticks):
        for _ in range(per_tick):
            variant = "ch_a" if rng.random() < share else "champion"
            p = p_challenger if variant == "ch_a" else p_champion
            totals[variant][0] += 1
            totals[variant][1] += rng.random() < p
        stats = {"dep_x": {v: row(n, e) for v, (n, e) in totals.items()}}
        decision = watch.observe(deployment, deltas.tick([record("r-1", stats)]).get("dep_x", {}))
        if decision is not None:
            return decision
    return None


def test_a_challenger_with_five_times_the_errors_is_rolled_back_with_replayable_evidence():
    watch = DeploymentWatch("dep_x")
    decision = _run(watch, _deployment(), 200, 0.01, 0.05, random.Random(3))
    assert decision is not None and decision.action == ROLLBACK and decision.challenger_id == "ch_a"
    evidence = decision.evidence
    assert evidence["test"] == "error_rate" and evidence["alpha"] == 0.01
    assert evidence["statistic"] >= evidence["threshold"]
    low, high = evidence["confidence_interval"]
    assert low >= 1 and evidence["challenger"]["errors"] > 0 and evidence["champion"]["requests"] > 0
    replayed = replay_evidence(evidence)
    assert replayed.rejected and abs(replayed.statistic - evidence["statistic"]) < 1e-9
    assert decision.request_id == "guardrail-guardrail_rollback-ch_a-v5" and decision.body == {"challenger_id": "ch_a"}


def test_an_equal_challenger_steps_after_step_after_requests_and_gets_no_rollback():
    watch = DeploymentWatch("dep_x")
    decision = _run(watch, _deployment(pct=5), 100, 0.01, 0.01, random.Random(4))
    assert decision is not None and decision.action == STEP and decision.traffic_bp == 1000
    assert decision.evidence["requests_since_change"] >= 500 and decision.body == {"challenger_id": "ch_a", "traffic_pct": 10}


def test_a_changed_share_restarts_the_step_count_but_not_the_error_test():
    watch = DeploymentWatch("dep_x", JudgeSettings())
    rng = random.Random(5)
    policy = GuardrailPolicy(latency_quantile=None, steps_bp=(2500,), step_after_requests=100_000)
    _run(watch, _deployment(pct=5, policy=policy), 20, 0.01, 0.01, rng)
    error_test = watch.challengers["ch_a"].error
    assert watch.challengers["ch_a"].requests_since_change > 0
    _run(watch, _deployment(pct=10, policy=policy, version=6), 1, 0.01, 0.01, rng)
    assert watch.challengers["ch_a"].error is error_test  # the same test: intervals are conditioned
    assert watch.challengers["ch_a"].requests_since_change < 60  # one tick's worth since the change


def test_srm_flags_the_deployment_and_stops_steps():
    watch = DeploymentWatch("dep_x")
    deployment = _deployment(pct=10, policy=GuardrailPolicy(latency_quantile=None, steps_bp=(2500,),
                                                            step_after_requests=100))
    deltas = CounterDeltas()
    decisions = []
    for tick in range(1, 60):  # 5 % observed against 10 % allocated
        stats = {"dep_x": {"champion": row(950 * tick), "ch_a": row(50 * tick)}}
        decisions.append(watch.observe(deployment, deltas.tick([record("r-1", stats)]).get("dep_x", {})))
    assert watch.srm_flagged and watch.state()["challengers"]["ch_a"]["state"] == "srm"
    assert all(d is None or d.action != STEP for d in decisions[10:])


def test_the_decision_is_rejudged_on_the_config_it_would_replace():
    decision = DeploymentWatch("dep_x")
    decision = _run(decision, _deployment(), 200, 0.01, 0.05, random.Random(3))
    models = {"mod_a": Model("mod_a", "h:1", "a", org_id="org_1"), "mod_b": Model("mod_b", "h:1", "b", org_id="org_1")}
    rolled, challenger = decision_mutation(decision)(_deployment(), models)
    assert not challenger.is_active and rolled.challenger_bp == 0
    for changed in (_deployment(version=6), _deployment().with_challengers(())):
        try:
            decision_mutation(decision)(changed, models)
        except ApiError as err:
            assert err.code == "version_conflict"
        else:
            raise AssertionError("a decision must not apply to a config it did not judge")


def test_shadow_mode_compares_the_copies_errors_with_the_champions():
    watch = DeploymentWatch("dep_x")
    deployment = _deployment(shadow=True)
    deltas = CounterDeltas()
    rng = random.Random(9)
    champion, copies, copy_errors = [0, 0], 0, 0
    decision = None
    for _ in range(200):
        for _ in range(200):
            champion[0] += 1
            champion[1] += rng.random() < 0.01
            if rng.random() < 0.1:
                copies += 1
                copy_errors += rng.random() < 0.06
        stats = {"dep_x": {"champion": row(*champion), "ch_a": {"mirrored": copies, "mirror_answers": copies,
                                                                "mirror_errors": copy_errors}}}
        decision = watch.observe(deployment, deltas.tick([record("r-1", stats)]).get("dep_x", {}))
        if decision:
            break
    assert decision is not None and decision.action == ROLLBACK
    assert decision.evidence["champion"]["requests"] > decision.evidence["challenger"]["requests"]
