"""tsplit.router_record: the one definition of the router record, written by the routers
(dataplane.registration, dataplane.stats) and read by the status and the guardrail judge."""

from __future__ import annotations

import math

from controlplane.guardrails import deltas
from dataplane.registration import Registration
from dataplane.stats import VariantStats
from tsplit import router_record
from tsplit.layout import Layout
from tsplit.router_record import COUNTS, FIELDS, HISTOGRAMS, N_BUCKETS, VARIANT_FIELDS


def test_the_python_routers_counters_are_the_records_variant_fields():
    row = VariantStats("mod_a")
    row.answered(3.0, "UNAVAILABLE")
    counters = row.to_json()
    assert tuple(counters) == VARIANT_FIELDS
    assert counters["errors_by_code"] == {"UNAVAILABLE": 1} and len(counters["latency_buckets"]) == N_BUCKETS
    counters["latency_buckets"][0] = 99  # a copy: the record never aliases the live counters
    assert row.latency_buckets[0] == 0


def test_a_registration_writes_the_records_fields():
    registration = Registration(None, Layout("/t"), "r-1", "router", "127.0.0.1:1", "", dict, dict)
    assert tuple(registration.record()) == FIELDS


def test_the_guardrails_read_the_records_counts_and_histograms():
    assert set(deltas.SCALARS) <= set(COUNTS) and deltas.HISTOGRAMS is HISTOGRAMS


def test_readers_take_malformed_parts_as_zeros():
    record = {"router_id": "r-1", "applied": {"dep_x": 3, "dep_y": True}, "stats": {
        "dep_x": {"champion": {"requests": math.inf, "errors": -1, "failovers": True, "mirrored": 2,
                               "latency_buckets": [1, 2]},
                  "ch_a": "not counters"},
        "dep_y": []}}
    assert [(s, v) for s, v, _ in router_record.all_counters(record)] == [("dep_x", "champion")]
    assert (router_record.applied_version(record, "dep_x"), router_record.applied_version(record, "dep_y")) == (3, 0)
    assert [router_record.count(v) for v in (math.inf, math.nan, -1, True, "3", 2.5)] == [0, 0, 0, 0, 0, 2.5]
    assert router_record.histogram([1, 2]) is None and router_record.histogram([1.0] * N_BUCKETS) == (1,) * N_BUCKETS
    requests, errors, failovers, mirrored = deltas.read_counters(record)["dep_x"]["champion"][:4]
    assert (requests, errors, failovers, mirrored) == (0, 0, 0, 2)
