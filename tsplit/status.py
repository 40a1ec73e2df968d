"""A deployment's status: what the live routers report, summed (SPEC section 4).

Each router (or proxyless client) keeps one lease-bound JSON record under
``{prefix}/routers/{router_id}`` with the cache_version it applied per deployment and
cumulative counters per deployment and variant (tsplit/router_record.py defines it). This
module turns a list of records into the status JSON the control plane, the gateway and the
CLI show. It is pure: records in, a dict out; a record that is malformed in part counts as
zeros for that part, so one bad router never hides the others.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, Mapping

from tsplit import router_record
from tsplit.allocation import slot_counts
from tsplit.resources import Deployment, pct_to_json
from tsplit.router_record import LATENCY_BUCKETS_MS, applied_version, count, mapping

__all__ = ["CHAMPION", "LATENCY_BUCKETS_MS", "empty_buckets", "latency_bucket", "quantile_from_buckets",
           "router_sync_summary", "summarize_deployment_status", "variant_health"]

CHAMPION = "champion"

# A variant's health (its row's `health`), from its counters in a window: the counts since
# the routers started, or what changed between two readings (`tsplit get --watch`).
LIVE, FAILING, ERRORING = "live", "failing", "erroring"
_HEALTH_COUNTS = ("requests", "ok", "errors", "failovers", "mirror_answers", "mirror_errors")


def variant_health(counts: Mapping[str, Any]) -> str:
    """'failing': in the window the variant answered nothing itself and either failed over
    (its calls went to the champion) or had every shadow copy fail; 'erroring': more
    errors than successes; else 'live'."""
    requests, ok, errors, failovers, mirror_answers, mirror_errors = (
        count(counts.get(name)) for name in _HEALTH_COUNTS)
    if requests == 0 and (failovers > 0 or 0 < mirror_answers <= mirror_errors):
        return FAILING
    if requests > 0 and errors > ok:
        return ERRORING
    return LIVE


def _health(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> str:
    """A row's health over what changed since `before` (the same variant's row of an
    earlier status): when nothing happened since, the health `before` had; with no earlier
    row, or a count that went down (a router restarted: its counts before are gone), over
    the counts since the routers started."""
    if before is None:
        return variant_health(now)
    delta = {name: count(now.get(name)) - count(before.get(name)) for name in _HEALTH_COUNTS}
    if min(delta.values()) < 0:
        return variant_health(now)
    if not (delta["requests"] or delta["failovers"] or delta["mirror_answers"]):
        return before.get("health") if before.get("health") in (LIVE, FAILING, ERRORING) else variant_health(now)
    return variant_health(delta)


def latency_bucket(latency_ms: float) -> int:
    """Index of the bucket a latency falls in (len(LATENCY_BUCKETS_MS) for +inf)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)


def empty_buckets() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS_MS) + 1)


def quantile_from_buckets(buckets: list[int], q: float) -> float:
    """The q-quantile (0..1) of a histogram, interpolated linearly inside its bucket as
    Prometheus' histogram_quantile does; 0.0 for an empty histogram. A quantile in the +inf
    bucket answers the highest finite bound (the histogram cannot say more)."""
    total = sum(buckets)
    if total <= 0:
        return 0.0
    rank = q * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            if index >= len(LATENCY_BUCKETS_MS):
                return float(LATENCY_BUCKETS_MS[-1])
            lower = LATENCY_BUCKETS_MS[index - 1] if index else 0.0
            upper = LATENCY_BUCKETS_MS[index]
            return float(lower + (upper - lower) * (rank - cumulative) / count)
        cumulative += count
    return float(LATENCY_BUCKETS_MS[-1])


class _VariantTotals:
    """Counters of one variant summed over routers."""

    def __init__(self) -> None:
        self.values: dict[str, float] = dict.fromkeys(router_record.COUNTS + router_record.SUMS, 0)
        self.buckets = empty_buckets()

    def add(self, stats: Mapping[str, Any]) -> None:
        for name in self.values:
            self.values[name] += count(stats.get(name))
        # A record with other bucket bounds (another version of the router) cannot be
        # summed bucket by bucket: its latencies still count in the average, not in p99.
        for i, n in enumerate(router_record.histogram(stats.get("latency_buckets")) or ()):
            self.buckets[i] += n

    def row(self, variant: str, model_id: str, traffic_pct: float) -> dict[str, Any]:
        v = self.values
        return {
            "variant": variant, "model_id": model_id, "traffic_pct": traffic_pct,
            "requests": int(v["requests"]), "ok": int(v["ok"]), "errors": int(v["errors"]),
            "avg_latency_ms": _ratio(v["latency_ms_sum"], v["requests"]) or 0.0,
            "p99_latency_ms": quantile_from_buckets(self.buckets, 0.99),
            "failovers": int(v["failovers"]),
            "mirrored": int(v["mirrored"]), "mirror_dropped": int(v["mirror_dropped"]),
            "mirror_errors": int(v["mirror_errors"]), "mirror_answers": int(v["mirror_answers"]),
            "avg_mirror_latency_ms": _ratio(v["mirror_latency_ms_sum"], v["mirrored"]) or 0.0,
            "compared": int(v["compared"]),
            "label_agreement": _ratio(v["label_agree"], v["label_total"]),
            "exact_match_rate": _ratio(v["exact_matches"], v["compared"]),
            "mean_abs_diff": _ratio(v["abs_diff_sum"], v["abs_diff_count"]),
            "forced": int(v["forced"]),
            "latency_buckets_ms": list(LATENCY_BUCKETS_MS), "latency_counts": list(self.buckets),
            "guardrail": None,
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / denominator if denominator > 0 else None


def _records(router_records: Iterable[Any]) -> list[Mapping[str, Any]]:
    """The records that are JSON objects (a writer's bug must not break everyone's status)."""
    return [record for record in router_records if isinstance(record, Mapping)]


def _router_rows(deployment: Deployment, router_records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = [
        {
            "router_id": str(record.get("router_id", "")),
            "address": str(record.get("address", "")),
            "applied_cache_version": applied_version(record, deployment.deployment_id),
            "kind": str(record.get("kind", "router")),
        }
        for record in router_records
    ]
    return sorted(rows, key=lambda row: row["router_id"])


def _guardrail_rows(deployment: Deployment, state: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the deployment's `guardrails` status, each challenger's `guardrail` object) from
    the judge's published state ({prefix}/guardrails/{slug}); no state yet (no judge has
    looked): every challenger watching, nothing measured."""
    if deployment.guardrails is None:
        return None, {}
    state = mapping(state)
    challengers = mapping(state.get("challengers"))
    srm = mapping(state.get("srm"))
    rows = {}
    for c in deployment.active_challengers:
        row = challengers.get(c.id)
        rows[c.id] = dict(row) if isinstance(row, Mapping) else {
            "state": "watching", "error_ratio": None, "p_value": None, "latency_exceedance": None,
            "requests_since_change": 0}
    summary = {"policy": deployment.guardrails.to_json(), "judge": state.get("judge"),
               "judged_cache_version": state.get("judged_cache_version"),
               "srm": bool(srm.get("flagged", False)), "srm_p_value": srm.get("p_value")}
    return summary, rows


def summarize_deployment_status(deployment: Deployment, router_records: list[dict],
                                guardrail_state: Mapping[str, Any] | None = None,
                                previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status JSON of SPEC section 4: router sync and per-variant stats summed over
    the live routers' records. Rows: the champion, then each active challenger in the
    deployment's order, each with the slots it owns; field names match
    tsplit.v1.DeploymentStatus. guardrail_state is the judge's published state of the
    deployment, when there is one. Each row's `health` (variant_health) reads its counts
    since the routers started, or, given `previous` (an earlier status of the deployment),
    what changed since then."""
    router_records = _records(router_records)
    variants = [(CHAMPION, deployment.champion_model_id)] + [
        (c.id, c.model_id) for c in deployment.active_challengers]
    totals = {variant: _VariantTotals() for variant, _ in variants}
    for record in router_records:
        for variant, stats in router_record.deployment_counters(record, deployment.deployment_id):
            if variant in totals:
                totals[variant].add(stats)

    champion_pct = 100 if deployment.shadow_mode else pct_to_json(deployment.champion_bp)
    rows = [totals[CHAMPION].row(CHAMPION, deployment.champion_model_id, champion_pct)]
    rows += [totals[c.id].row(c.id, c.model_id, c.traffic_pct) for c in deployment.active_challengers]
    slots = slot_counts(deployment.allocation or ())
    before = {row.get("variant"): row for row in mapping(previous).get("variants") or () if isinstance(row, Mapping)}
    for row in rows:
        row["slots"] = slots.get(row["variant"], 0)
        row["health"] = _health(row, before.get(row["variant"]))
    guardrails, guardrail_rows = _guardrail_rows(deployment, guardrail_state)
    for row in rows[1:]:
        row["guardrail"] = guardrail_rows.get(row["variant"])
    status = {
        "deployment_id": deployment.deployment_id,
        "cache_version": deployment.cache_version,
        "shadow_mode": deployment.shadow_mode,
        "routers": _router_rows(deployment, router_records),
        "variants": rows,
    }
    if guardrails is not None:
        status["guardrails"] = guardrails
    return status


def router_sync_summary(deployment: Deployment, router_records: list[dict]) -> tuple[int, int, list[str]]:
    """(routers that applied the deployment's current cache_version or a newer one,
    all live routers, the ids of the others sorted)."""
    router_records = _records(router_records)
    stale = sorted(
        str(record.get("router_id", "")) for record in router_records
        if applied_version(record, deployment.deployment_id) < deployment.cache_version)
    return len(router_records) - len(stale), len(router_records), stale
