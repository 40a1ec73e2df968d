"""The native core's counters are the router record's (tsplit/router_record.py): the same
variant fields, and latency buckets with tsplit.status.LATENCY_BUCKETS_MS's edges, which
dataplane/server.py hands the core at start (its own default, in stats.rs, must be the same
for a core started without them)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tsplit.router_record import N_BUCKETS, VARIANT_FIELDS
from tsplit.status import LATENCY_BUCKETS_MS, latency_bucket

STATS_RS = Path(__file__).resolve().parents[2] / "dataplane" / "native" / "src" / "stats.rs"


def test_the_cores_default_edges_are_tsplit_statuss():
    match = re.search(r"pub const LATENCY_BUCKETS_MS: \[f64; (\d+)\] =\s*\[([^\]]*)\];", STATS_RS.read_text())
    assert match, f"no LATENCY_BUCKETS_MS constant in {STATS_RS}"
    edges = tuple(float(v) for v in match.group(2).split(","))
    assert int(match.group(1)) == len(edges) and edges == tuple(float(e) for e in LATENCY_BUCKETS_MS)


async def test_the_running_core_buckets_answers_on_tsplit_statuss_edges(backends, router_factory, client_factory, dp):
    """Answers of a model that takes 120 ms land in the bucket tsplit.status gives a
    latency between 120 ms and what the caller measured (100 < 120 <= 200: that one bucket
    unless the machine added 80 ms), in a row of N_BUCKETS counts with the record's fields."""
    await backends.demo_model("mod_slow", latency_ms=120.0)
    await backends.deployment("dep_edges", "mod_slow")
    router = await router_factory()
    await dp.wait_for_version(router, "dep_edges", 1)
    client = client_factory(router.address)
    slowest_ms = 0.0
    for _ in range(3):
        started = time.perf_counter()
        await client.infer(dp.infer_request("dep_edges"))
        slowest_ms = max(slowest_ms, (time.perf_counter() - started) * 1000)
    row = router.stats.snapshot()["dep_edges"]["champion"]
    assert set(row) == set(VARIANT_FIELDS)
    buckets = row["latency_buckets"]
    low, high = latency_bucket(120.0), latency_bucket(slowest_ms)
    assert len(buckets) == N_BUCKETS and sum(buckets[low:high + 1]) == 3 == sum(buckets), (buckets, slowest_ms)
