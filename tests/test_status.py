"""tsplit.status: summing router records into the deployment status."""

from __future__ import annotations

import json
import math
import random

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from tsplit.resources import Challenger, Deployment
from tsplit.router_record import parse_records as parse_router_records, read_records as read_router_records
from tsplit.status import (
    LATENCY_BUCKETS_MS, empty_buckets, latency_bucket, quantile_from_buckets, router_sync_summary,
    summarize_deployment_status,
)
from tsplit.v1 import controlplane_pb2


def deployment(shadow: bool = False, version: int = 4) -> Deployment:
    return Deployment(
        deployment_id="dep_x", org_id="org_1", champion_model_id="mod_champ",
        challengers=(
            Challenger("ch_a", "mod_a", 1000),
            Challenger("ch_b", "mod_b", 1250),
            Challenger("ch_gone", "mod_c", 500, is_active=False),
        ),
        shadow_mode=shadow, cache_version=version,
    )


def variant_stats(latencies_ms: list[float], errors: int = 0, **extra) -> dict:
    buckets = empty_buckets()
    for latency in latencies_ms:
        buckets[latency_bucket(latency)] += 1
    stats = {
        "model_id": "mod_?", "requests": len(latencies_ms), "ok": len(latencies_ms) - errors,
        "errors": errors, "errors_by_code": {"UNAVAILABLE": errors},
        "latency_ms_sum": sum(latencies_ms), "latency_buckets": buckets,
        "failovers": 0, "mirrored": 0, "mirror_dropped": 0, "mirror_errors": 0,
        "mirror_latency_ms_sum": 0.0, "compared": 0, "exact_matches": 0,
        "label_agree": 0, "label_total": 0, "abs_diff_sum": 0.0, "abs_diff_count": 0,
    }
    stats.update(extra)
    return stats


def record(router_id: str, applied: dict, stats: dict, kind: str = "router") -> dict:
    return {
        "router_id": router_id, "kind": kind, "address": f"127.0.0.1:{8000 + len(router_id)}",
        "metrics_url": "", "pid": 1, "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z", "applied": applied, "stats": stats,
    }


def row(status: dict, variant: str) -> dict:
    return next(r for r in status["variants"] if r["variant"] == variant)


def test_rows_for_champion_and_active_challengers_with_their_shares():
    dep = deployment()
    status = summarize_deployment_status(dep, [])
    assert [r["variant"] for r in status["variants"]] == ["champion", "ch_a", "ch_b"]
    assert [r["model_id"] for r in status["variants"]] == ["mod_champ", "mod_a", "mod_b"]
    assert row(status, "champion")["traffic_pct"] == 100 - 10 - 12.5
    assert row(status, "ch_b")["traffic_pct"] == 12.5
    assert (status["deployment_id"], status["cache_version"], status["shadow_mode"]) == ("dep_x", 4, False)
    shadow = summarize_deployment_status(deployment(shadow=True), [])
    assert row(shadow, "champion")["traffic_pct"] == 100
    assert row(shadow, "ch_a")["traffic_pct"] == 10


def test_counters_sum_across_routers_and_averages_weigh_by_requests():
    lat_1, lat_2 = [1.0, 2.0, 4.0], [10.0, 30.0]
    records = [
        record("r-1", {"dep_x": 4}, {"dep_x": {"champion": variant_stats(lat_1, errors=1)}}),
        record("r-2", {"dep_x": 3}, {"dep_x": {"champion": variant_stats(lat_2, failovers=0),
                                               "ch_a": variant_stats([5.0], failovers=2)}}),
        record("r-3", {}, {"dep_other": {"champion": variant_stats([100.0] * 7)}}),
    ]
    status = summarize_deployment_status(deployment(), records)
    champion = row(status, "champion")
    assert champion["requests"] == len(lat_1) + len(lat_2)
    assert champion["errors"] == 1 and champion["ok"] == len(lat_1) + len(lat_2) - 1
    assert champion["avg_latency_ms"] == pytest.approx(sum(lat_1 + lat_2) / len(lat_1 + lat_2))
    assert row(status, "ch_a")["failovers"] == 2
    assert row(status, "ch_b")["requests"] == 0 and row(status, "ch_b")["avg_latency_ms"] == 0.0
    assert status["routers"] == [
        {"router_id": "r-1", "address": records[0]["address"], "applied_cache_version": 4, "kind": "router"},
        {"router_id": "r-2", "address": records[1]["address"], "applied_cache_version": 3, "kind": "router"},
        {"router_id": "r-3", "address": records[2]["address"], "applied_cache_version": 0, "kind": "router"},
    ]


def test_latency_buckets_are_spec_section_4s_twelve_edges_and_an_overflow():
    assert LATENCY_BUCKETS_MS == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
    assert len(empty_buckets()) == 13
    assert (latency_bucket(1.0), latency_bucket(1.001), latency_bucket(5000), latency_bucket(5000.1)) == (0, 1, 11, 12)


def test_p99_comes_from_the_summed_buckets():
    # 990 fast requests on one router, 10 slow ones on another: p99 lies at the fast/slow edge,
    # which neither router's own histogram shows.
    fast, slow = [0.8] * 990, [400.0] * 10
    records = [record("r-1", {}, {"dep_x": {"champion": variant_stats(fast)}}),
               record("r-2", {}, {"dep_x": {"champion": variant_stats(slow)}})]
    p99 = row(summarize_deployment_status(deployment(), records), "champion")["p99_latency_ms"]
    fast_bucket = latency_bucket(0.8)
    assert fast_bucket == 0 and 0.0 < p99 <= LATENCY_BUCKETS_MS[0]
    with_more_slow = [record("r-1", {}, {"dep_x": {"champion": variant_stats(fast[:900])}}),
                      record("r-2", {}, {"dep_x": {"champion": variant_stats(slow * 10)}})]
    p99_slow = row(summarize_deployment_status(deployment(), with_more_slow), "champion")["p99_latency_ms"]
    slow_bucket = latency_bucket(400.0)
    assert LATENCY_BUCKETS_MS[slow_bucket - 1] < p99_slow <= LATENCY_BUCKETS_MS[slow_bucket]


def test_comparison_figures_are_null_before_any_comparison_then_ratios():
    status = summarize_deployment_status(deployment(shadow=True), [record("r-1", {}, {})])
    for r in status["variants"]:
        assert r["label_agreement"] is None and r["exact_match_rate"] is None and r["mean_abs_diff"] is None
    mirrors = [
        {"mirrored": 40, "mirror_dropped": 3, "mirror_errors": 2, "mirror_latency_ms_sum": 200.0,
         "compared": 38, "exact_matches": 30, "label_agree": 35, "label_total": 38,
         "abs_diff_sum": 1.5, "abs_diff_count": 30},
        {"mirrored": 10, "mirror_dropped": 0, "mirror_errors": 0, "mirror_latency_ms_sum": 70.0,
         "compared": 10, "exact_matches": 10, "label_agree": 10, "label_total": 10,
         "abs_diff_sum": 0.0, "abs_diff_count": 10},
    ]
    records = [record(f"r-{i}", {}, {"dep_x": {"ch_a": variant_stats([], **m)}}) for i, m in enumerate(mirrors)]
    ch_a = row(summarize_deployment_status(deployment(shadow=True), records), "ch_a")
    total = {k: sum(m[k] for m in mirrors) for k in mirrors[0]}
    assert ch_a["mirrored"] == total["mirrored"] and ch_a["mirror_dropped"] == total["mirror_dropped"]
    assert ch_a["mirror_errors"] == total["mirror_errors"] and ch_a["compared"] == total["compared"]
    assert ch_a["label_agreement"] == pytest.approx(total["label_agree"] / total["label_total"])
    assert ch_a["exact_match_rate"] == pytest.approx(total["exact_matches"] / total["compared"])
    assert ch_a["mean_abs_diff"] == pytest.approx(total["abs_diff_sum"] / total["abs_diff_count"])
    assert ch_a["avg_mirror_latency_ms"] == pytest.approx(total["mirror_latency_ms_sum"] / total["mirrored"])
    assert 0 <= ch_a["label_agreement"] <= 1


def test_inactive_challengers_and_malformed_parts_are_ignored_not_fatal():
    good = variant_stats([1.0, 2.0])
    records = [
        record("r-1", {"dep_x": "4"}, {"dep_x": {"champion": good, "ch_gone": variant_stats([9.0])}}),
        record("r-2", {"dep_x": True}, {"dep_x": {"champion": {"requests": "many", "latency_buckets": [1, 2],
                                                             "ok": -3, "errors": float("nan")}}}),
        record("r-3", [], {"dep_x": []}),
        ["not", "a", "record"], None,
    ]
    status = summarize_deployment_status(deployment(), records)
    assert [r["variant"] for r in status["variants"]] == ["champion", "ch_a", "ch_b"]
    assert row(status, "champion")["requests"] == good["requests"]
    assert row(status, "champion")["ok"] == good["ok"] and row(status, "champion")["errors"] == 0
    assert [r["applied_cache_version"] for r in status["routers"]] == [0, 0, 0]
    assert router_sync_summary(deployment(), records) == (0, 3, ["r-1", "r-2", "r-3"])


def test_status_fits_the_proto_message():
    records = [record("r-1", {"dep_x": 4}, {"dep_x": {"champion": variant_stats([1.0]),
                                                      "ch_a": variant_stats([2.0], compared=1, exact_matches=1,
                                                                            label_agree=1, label_total=1)}})]
    status = summarize_deployment_status(deployment(), records)
    message = json_format.ParseDict(status, controlplane_pb2.DeploymentStatus())
    assert message.routers[0].applied_cache_version == 4
    assert message.variants[1].HasField("label_agreement") and not message.variants[0].HasField("label_agreement")
    assert json.loads(json.dumps(status)) == status


def test_router_sync_summary_counts_routers_at_or_past_the_version():
    dep = deployment(version=5)
    records = [record("r-b", {"dep_x": 4}, {}), record("r-a", {"dep_x": 5}, {}),
               record("r-c", {"dep_x": 6}, {}), record("r-d", {}, {}, kind="client")]
    assert router_sync_summary(dep, records) == (2, 4, ["r-b", "r-d"])
    assert router_sync_summary(dep, []) == (0, 0, [])


def test_parse_router_records_skips_broken_values():
    values = [json.dumps(record("r-1", {}, {})).encode(), b"{not json", b"[1, 2]", b"\xff\xfe"]
    assert [r["router_id"] for r in parse_router_records(values)] == ["r-1"]


async def test_read_router_records_from_etcd(etcd, layout):
    await etcd.put(layout.router("r-1"), json.dumps(record("r-1", {"dep_x": 4}, {})).encode())
    await etcd.put(layout.router("r-2"), b"garbage")
    await etcd.put(layout.deployment("dep_x"), b"{}")
    records = await read_router_records(etcd, layout)
    assert [r["router_id"] for r in records] == ["r-1"]


# Properties.

latencies = st.lists(st.floats(min_value=0.01, max_value=60_000, allow_nan=False), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(latencies, st.floats(min_value=0.01, max_value=1.0))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values, q):
    buckets = empty_buckets()
    for v in values:
        buckets[latency_bucket(v)] += 1
    estimate = quantile_from_buckets(buckets, q)
    true = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    index = latency_bucket(true)
    lower = LATENCY_BUCKETS_MS[index - 1] if index else 0.0
    upper = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else LATENCY_BUCKETS_MS[-1]
    assert lower <= estimate <= upper
    assert quantile_from_buckets(buckets, q / 2) <= estimate


counts = st.integers(min_value=0, max_value=10_000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(latencies, counts, counts, counts), min_size=1, max_size=6))
def test_summing_is_additive_over_routers(per_router):
    records = []
    for i, (lats, mirrored, compared, agree) in enumerate(per_router):
        stats = variant_stats(lats, mirrored=mirrored, compared=compared,
                              label_agree=min(agree, compared), label_total=compared)
        records.append(record(f"r-{i}", {"dep_x": i}, {"dep_x": {"ch_a": stats}}))
    random.Random(0).shuffle(records)
    whole = row(summarize_deployment_status(deployment(), records), "ch_a")
    parts = [row(summarize_deployment_status(deployment(), [r]), "ch_a") for r in records]
    for name in ("requests", "ok", "errors", "mirrored", "compared"):
        assert whole[name] == sum(p[name] for p in parts)
    total_lat = sum(sum(lats) for lats, *_ in per_router)
    assert whole["avg_latency_ms"] == pytest.approx(total_lat / whole["requests"])
    if whole["compared"]:
        agree = sum(min(a, c) for _, _, c, a in per_router)
        assert whole["label_agreement"] == pytest.approx(agree / whole["compared"])
    else:
        assert whole["label_agreement"] is None


def test_guardrail_objects_come_from_the_judges_state_and_are_null_without_a_policy():
    from dataclasses import replace

    from tsplit.resources import GuardrailPolicy

    plain = summarize_deployment_status(deployment(), [])
    assert "guardrails" not in plain and all(r["guardrail"] is None for r in plain["variants"])
    guarded = replace(deployment(), guardrails=GuardrailPolicy(steps_bp=(1000, 2500)))
    judged = {"ch_a": {"state": "srm", "error_ratio": {"estimate": 1.1, "confidence_interval": [0.5, 2.0]},
                       "p_value": 0.4, "latency_exceedance": None, "requests_since_change": 42}}
    state = {"judge": "controlplane 127.0.0.1:1", "judged_cache_version": 4, "srm": {"flagged": True, "p_value": 1e-4},
             "challengers": judged}
    status = summarize_deployment_status(guarded, [], state)
    assert row(status, "champion")["guardrail"] is None
    assert row(status, "ch_a")["guardrail"] == judged["ch_a"]
    assert row(status, "ch_b")["guardrail"] == {  # not judged yet: watching, nothing measured
        "state": "watching", "error_ratio": None, "p_value": None, "latency_exceedance": None,
        "requests_since_change": 0}
    assert status["guardrails"]["srm"] is True and status["guardrails"]["policy"]["steps"] == [10, 25]
    message = json_format.ParseDict(status, controlplane_pb2.DeploymentStatus())
    assert message.variants[1].guardrail["requests_since_change"] == 42


# --- a variant's health (issue 11: a challenger that only fails over reads failing) --------

def written_record(stats: "RouterStats", router_id: str = "r-1", applied: dict | None = None) -> dict:
    """The record a Python router writes (dataplane.registration) over these counters, as
    etcd hands it back."""
    from dataplane.registration import Registration
    from tsplit.layout import Layout
    from tsplit.resources import dumps

    registration = Registration(None, Layout("/t"), router_id, "router", "127.0.0.1:1", "",
                                lambda: applied or {"dep_x": 4}, stats.snapshot)
    return json.loads(dumps(registration.record()))


def counted(failovers: int = 0, answered: int = 0, errors: int = 0, copies: int = 0, copy_errors: int = 0,
            stats: "RouterStats | None" = None, variant: str = "ch_a") -> "RouterStats":
    """RouterStats as the router counts: the champion answers what the challenger failed over."""
    from dataplane.stats import RouterStats

    stats = stats or RouterStats()
    champion, challenger = stats.variant("dep_x", "champion", "mod_champ"), stats.variant("dep_x", variant, "mod_a")
    for _ in range(failovers):
        challenger.failovers += 1
        champion.answered(2.0)
    for i in range(answered):
        challenger.answered(3.0, "UNAVAILABLE" if i < errors else None)
    for i in range(copies):
        challenger.mirrored += 1
        challenger.mirror_answered(4.0, ok=i >= copy_errors)
    return stats


def test_a_challenger_that_only_fails_over_is_failing_and_one_that_mostly_errors_is_erroring():
    stats = counted(failovers=74)
    counted(answered=10, errors=7, stats=stats, variant="ch_b")
    status = summarize_deployment_status(deployment(), [written_record(stats)])
    assert (row(status, "ch_a")["failovers"], row(status, "ch_a")["requests"]) == (74, 0)
    assert [(r["variant"], r["health"]) for r in status["variants"]] == [
        ("champion", "live"), ("ch_a", "failing"), ("ch_b", "erroring")]
    assert summarize_deployment_status(deployment(), [])["variants"][1]["health"] == "live"  # nothing sent yet


def test_a_shadow_challenger_whose_every_copy_failed_is_failing_with_its_mirror_errors():
    status = summarize_deployment_status(deployment(shadow=True), [written_record(counted(copies=67, copy_errors=67))])
    ch_a = row(status, "ch_a")
    assert (ch_a["mirrored"], ch_a["mirror_errors"], ch_a["mirror_answers"], ch_a["health"]) == (67, 67, 67, "failing")
    some_ok = summarize_deployment_status(deployment(shadow=True), [written_record(counted(copies=67, copy_errors=60))])
    assert row(some_ok, "ch_a")["health"] == "live"


def test_health_reads_the_window_since_the_previous_status():
    """A challenger that answered once and now only fails over: live over the routers'
    whole run, failing over the last window; an idle window keeps it; a restarted router
    (counts down) falls back to the whole run."""
    stats = counted(answered=100)
    before = summarize_deployment_status(deployment(), [written_record(stats)])
    counted(failovers=10, stats=stats)
    records = [written_record(stats)]
    assert row(summarize_deployment_status(deployment(), records), "ch_a")["health"] == "live"
    now = summarize_deployment_status(deployment(), records, previous=before)
    assert row(now, "ch_a")["health"] == "failing" and row(now, "champion")["health"] == "live"
    idle = summarize_deployment_status(deployment(), records, previous=now)
    assert row(idle, "ch_a")["health"] == "failing"
    restarted = summarize_deployment_status(deployment(), [written_record(counted(answered=3))], previous=idle)
    assert row(restarted, "ch_a")["health"] == "live"
