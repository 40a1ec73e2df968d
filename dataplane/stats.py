"""Per deployment and variant counters of one router, read two ways: snapshot() for the
router's etcd record and a Prometheus collector, so every figure is counted once.

Counters are plain ints on slotted objects, bumped from the router's single asyncio loop
with no locks (the proxyless client, whose callers run on many threads, bumps them under
a lock of its own: dataplane.dispatch.Dispatcher). The Prometheus HTTP server reads them from its own thread: it copies each
container (an atomic operation under the GIL) before iterating, so it never sees a dict
change size under it, at worst a row a request behind.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server

from tsplit.router_record import VARIANT_FIELDS
from tsplit.status import LATENCY_BUCKETS_MS, empty_buckets, latency_bucket


class VariantStats:
    """Cumulative counters of one variant of one deployment: the router record's variant
    fields (tsplit.router_record.VARIANT_FIELDS), one attribute each."""

    __slots__ = VARIANT_FIELDS

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.requests = self.ok = self.errors = self.failovers = 0
        self.errors_by_code: dict[str, int] = {}
        self.latency_ms_sum = 0.0
        self.latency_buckets = empty_buckets()
        self.mirrored = self.mirror_dropped = self.mirror_errors = 0
        self.mirror_latency_ms_sum = 0.0
        self.compared = self.exact_matches = self.label_agree = self.label_total = 0
        self.abs_diff_sum = 0.0
        self.abs_diff_count = 0
        # Requests forced with x-tsplit-variant: not randomized, so in none of the counters
        # above (the guardrails read those), only here.
        self.forced = self.forced_errors = 0
        # Shadow copies answered (errors included) and their latencies, for the guardrails.
        self.mirror_answers = 0
        self.mirror_latency_buckets = empty_buckets()

    def answered(self, latency_ms: float, error_code: str | None = None) -> None:
        """One answer given to a user: error_code is None for OK, else the status code name."""
        self.requests += 1
        self.latency_ms_sum += latency_ms
        self.latency_buckets[latency_bucket(latency_ms)] += 1
        if error_code is None:
            self.ok += 1
        else:
            self.errors += 1
            self.errors_by_code[error_code] = self.errors_by_code.get(error_code, 0) + 1

    def forced_answered(self, error_code: str | None = None) -> None:
        """One answer to a request that forced this variant (x-tsplit-variant)."""
        self.forced += 1
        if error_code is not None:
            self.forced_errors += 1

    def mirror_answered(self, latency_ms: float, ok: bool) -> None:
        self.mirror_answers += 1
        self.mirror_latency_ms_sum += latency_ms
        self.mirror_latency_buckets[latency_bucket(latency_ms)] += 1
        if not ok:
            self.mirror_errors += 1

    def compared_pair(self, exact_match: bool, label_agree: int, label_total: int,
                      abs_diff_sum: float, abs_diff_count: int) -> None:
        self.compared += 1
        self.exact_matches += int(exact_match)
        self.label_agree += label_agree
        self.label_total += label_total
        self.abs_diff_sum += abs_diff_sum
        self.abs_diff_count += abs_diff_count

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in VARIANT_FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
        return out


class RouterStats:
    """Every variant's counters, by deployment slug then variant name."""

    def __init__(self) -> None:
        self._deployments: dict[str, dict[str, VariantStats]] = {}
        # Applies counts deferred by callers on other threads (the proxyless client); snapshot() calls it.
        # Call it only on the thread that owns the counters (the router's event loop).
        self.settle: Callable[[], object] = lambda: None

    def variant(self, slug: str, name: str, model_id: str) -> VariantStats:
        """The counters of a variant, created on first use. A variant keeps its counters
        when its model changes (they are the variant's, and cumulative); it shows the
        latest model_id."""
        variants = self._deployments.get(slug)
        if variants is None:
            # setdefault, not a check then a store: atomic under the GIL, so two threads
            # (the proxyless client's callers) never each create a row and lose one's counts.
            variants = self._deployments.setdefault(slug, {})
        row = variants.get(name)
        if row is None:
            row = variants.setdefault(name, VariantStats(model_id))
        elif row.model_id != model_id:
            row.model_id = model_id
        return row

    def retain(self, slugs) -> None:
        """Forget the counters of deployments not in slugs (deleted ones: a slug is never
        reused), so the router record does not grow with every deployment ever seen."""
        for slug in [s for s in self._deployments if s not in slugs]:
            del self._deployments[slug]

    def forget(self, slug: str) -> None:
        """Forget one deleted deployment's counters (retain() for one slug, O(1))."""
        self._deployments.pop(slug, None)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The "stats" part of the router record."""
        self.settle()
        return {
            slug: {name: row.to_json() for name, row in list(variants.items())}
            for slug, variants in list(self._deployments.items())
        }

    def rows(self) -> list[tuple[str, str, VariantStats]]:
        """(slug, variant, counters) for every variant; safe to call from another thread."""
        return [
            (slug, name, row)
            for slug, variants in list(self._deployments.items())
            for name, row in list(variants.items())
        ]


_MS = 1000.0
_BUCKET_BOUNDS_S = tuple(str(bound / _MS) for bound in LATENCY_BUCKETS_MS) + ("+Inf",)
_LABELS = ["deployment", "variant", "model_id"]


class StatsCollector:
    """A Prometheus collector over RouterStats (and a few router gauges)."""

    def __init__(self, stats: RouterStats, gauges: Callable[[], Mapping[str, float]] = dict,
                 applied: Callable[[], Mapping[str, int]] = dict,
                 settle: Callable[[], object] = lambda: None) -> None:
        self._stats = stats
        self._gauges = gauges
        self._applied = applied
        self._settle = settle   # from the collector's thread: have deferred counts applied

    def collect(self) -> Iterator[Any]:
        self._settle()
        rows = self._stats.rows()
        counters = {
            name: CounterMetricFamily(f"tsplit_router_{name}", help_text, labels=_LABELS)
            for name, help_text in (
                ("requests", "Answers given to users by this variant (forced ones not included)."),
                ("forced", "Answers to requests that forced this variant (x-tsplit-variant)."),
                ("ok", "Answers with status OK."),
                ("failovers", "Requests this challenger could not take (UNAVAILABLE) that the champion answered."),
                ("mirrored", "Shadow copies sent to this variant."),
                ("mirror_dropped", "Shadow copies not sent: too many mirrors in flight."),
                ("mirror_errors", "Shadow copies that failed."),
                ("compared", "Shadow pairs compared with the champion."),
                ("exact_matches", "Shadow pairs whose outputs matched the champion's bit for bit."),
                ("label_agree", "Rows whose label agreed with the champion's."),
                ("label_compared", "Rows whose labels were compared."),
                ("abs_diff_compared", "Output elements in the absolute difference sum."),
            )
        }
        sums = {
            "abs_diff": CounterMetricFamily(
                "tsplit_router_abs_diff", "Sum of |challenger - champion| over compared output elements.",
                labels=_LABELS),
            "mirror_latency": CounterMetricFamily(
                "tsplit_router_mirror_latency_seconds", "Sum of shadow copies' latencies.", labels=_LABELS),
        }
        errors = CounterMetricFamily(
            "tsplit_router_errors", "Answers with an error status, by gRPC code.", labels=_LABELS + ["code"])
        latency = HistogramMetricFamily(
            "tsplit_router_request_duration_seconds", "Time from a request's arrival to its answer.",
            labels=_LABELS)
        for slug, name, row in rows:
            labels = [slug, name, row.model_id]
            for metric, value in (
                ("requests", row.requests), ("forced", row.forced), ("ok", row.ok), ("failovers", row.failovers),
                ("mirrored", row.mirrored), ("mirror_dropped", row.mirror_dropped),
                ("mirror_errors", row.mirror_errors), ("compared", row.compared),
                ("exact_matches", row.exact_matches), ("label_agree", row.label_agree),
                ("label_compared", row.label_total), ("abs_diff_compared", row.abs_diff_count),
            ):
                counters[metric].add_metric(labels, value)
            sums["abs_diff"].add_metric(labels, row.abs_diff_sum)
            sums["mirror_latency"].add_metric(labels, row.mirror_latency_ms_sum / _MS)
            for code, count in dict(row.errors_by_code).items():
                errors.add_metric(labels + [code], count)
            buckets = list(row.latency_buckets)
            cumulative, running = [], 0
            for bound, count in zip(_BUCKET_BOUNDS_S, buckets):
                running += count
                cumulative.append((bound, running))
            latency.add_metric(labels, cumulative, sum_value=row.latency_ms_sum / _MS)
        yield from counters.values()
        yield from sums.values()
        yield errors
        yield latency
        for name, value in dict(self._gauges()).items():
            yield GaugeMetricFamily(f"tsplit_router_{name}", f"Router gauge {name}.", value=value)
        applied = GaugeMetricFamily(
            "tsplit_router_applied_cache_version", "The cache_version applied per deployment.",
            labels=["deployment"])
        for slug, version in dict(self._applied()).items():
            applied.add_metric([slug], version)
        yield applied


class MetricsServer:
    """Prometheus text exposition on host:port (port 0 picks one), in a daemon thread."""

    def __init__(self, collector: StatsCollector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def stop(self) -> None:
        # shutdown() waits for serve_forever's next poll (up to 0.5 s): not on the loop.
        await asyncio.to_thread(self._httpd.shutdown)
        self._httpd.server_close()
