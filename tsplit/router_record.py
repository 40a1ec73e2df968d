"""The router record: its one definition (field names, counters, parsing).

Each router (or proxyless client) keeps one lease-bound JSON object under
``{prefix}/routers/{router_id}`` (SPEC section 6). dataplane/registration.py writes it; its
counters come from dataplane.stats.VariantStats or the native core
(dataplane/native/src/stats.rs), both in the shape below; tsplit.status (the status of
the control plane, the gateway and `tsplit get`) and the guardrail judge
(controlplane.guardrails.deltas) read it through the functions here.

    {"router_id": "r-…", "kind": "router" | "client", "address": "127.0.0.1:8001",
     "metrics_url": "http://…/metrics" or "", "pid": 123,
     "started_at": "…Z", "updated_at": "…Z",
     "applied": {"dep_x": 4, …},            # cache_version applied per deployment
     "stats": {"dep_x": {"<variant>": {…counters…}}}}

A variant's counters are cumulative since the router started: COUNTS (whole numbers),
SUMS, HISTOGRAMS (one count per latency bucket of LATENCY_BUCKETS_MS, then the overflow),
`model_id` and `errors_by_code` ({gRPC code name: count}). Requests forced with
x-tsplit-variant count in `forced` and `forced_errors` only; `mirror_answers` and
`mirror_latency_buckets` are the shadow copies answered (errors included).

Readers are lenient: a record that is not a JSON object is skipped, and a malformed part
counts as zeros, so one bad writer never hides the others.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Iterator, Mapping

from tsplit.resources import loads

log = logging.getLogger(__name__)

# Upper bounds (ms, inclusive, as Prometheus' "le") of the latency histogram buckets, exactly
# SPEC section 4's; the counts list has one more entry for the overflow (+inf). The one source
# of truth: the Python router's counters, its Prometheus buckets, the native core (given them
# at start by dataplane/server.py), the status and the guardrail judge all use it.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
N_BUCKETS = len(LATENCY_BUCKETS_MS) + 1

KINDS = ("router", "client")
IDENTITY = ("router_id", "kind", "address", "metrics_url", "pid", "started_at")
FIELDS = IDENTITY + ("updated_at", "applied", "stats")

COUNTS = (
    "requests", "ok", "errors", "failovers", "mirrored", "mirror_dropped", "mirror_errors", "mirror_answers",
    "compared", "exact_matches", "label_agree", "label_total", "abs_diff_count", "forced", "forced_errors",
)
SUMS = ("latency_ms_sum", "mirror_latency_ms_sum", "abs_diff_sum")
HISTOGRAMS = ("latency_buckets", "mirror_latency_buckets")
VARIANT_FIELDS = ("model_id", "errors_by_code") + COUNTS + SUMS + HISTOGRAMS


def identity(router_id: str, kind: str, address: str, metrics_url: str, pid: int, started_at: str) -> dict[str, Any]:
    """The record's fields that never change while the router runs."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not router_id or "/" in router_id:
        raise ValueError(f"router_id {router_id!r} must be non-empty and without '/'")
    return dict(zip(IDENTITY, (router_id, kind, address, metrics_url, pid, started_at)))


def parse_records(values: Iterable[bytes]) -> list[dict[str, Any]]:
    """Router records from their etcd values; one that is not a JSON object is skipped
    (logged)."""
    records = []
    for raw in values:
        try:
            record = loads(raw)
        except (ValueError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("skipping a router record that is not a JSON object: %.80r", raw)
    return records


async def read_records(etcd, layout) -> list[dict[str, Any]]:
    """Every live router record under layout.routers (tsplit.etcd.Etcd, tsplit.layout.Layout)."""
    kvs, _ = await etcd.get_prefix(layout.routers)
    return parse_records(kv.value for kv in kvs)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def count(value: Any) -> float:
    """A counter's value: a finite, non-negative number, else 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return value


def histogram(value: Any) -> tuple[int, ...] | None:
    """A histogram's counts; None when it is not one of LATENCY_BUCKETS_MS's (another
    router version's bounds cannot be summed bucket by bucket)."""
    if isinstance(value, list) and len(value) == N_BUCKETS:
        return tuple(int(count(v)) for v in value)
    return None


def applied_version(record: Mapping[str, Any], deployment_id: str) -> int:
    """The cache_version a router has applied for a deployment, 0 if none."""
    version = mapping(record.get("applied")).get(deployment_id, 0)
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def deployment_counters(record: Mapping[str, Any], deployment_id: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(variant, counters) of one deployment in one record, the well-formed rows only."""
    for variant, row in mapping(mapping(record.get("stats")).get(deployment_id)).items():
        if isinstance(row, Mapping):
            yield variant, row


def all_counters(record: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(deployment, variant, counters) of every well-formed row of one record."""
    for slug in mapping(record.get("stats")):
        for variant, row in deployment_counters(record, slug):
            yield slug, variant, row
