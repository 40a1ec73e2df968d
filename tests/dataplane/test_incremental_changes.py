"""A config change costs O(changed) on the router: the applied-versions map with its cached
JSON, the endpoint reference counts and ConfigSync's per-change route list, each against
a full recomputation (hypothesis), and ConfigSync's changes against a real etcd."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.applied import AppliedVersions
from dataplane.backends import table_endpoints
from dataplane.config_sync import ConfigSync, SyncSettings
from dataplane.endpoint_refs import EndpointRefs
from dataplane.registration import Registration
from dataplane.routing import RoutingTable, build_route
from tsplit.etcd import put_op
from tsplit.resources import Challenger, Deployment, Model, dumps

FAST = SyncSettings(backoff_start_s=0.02, backoff_cap_s=0.2)

applied_ops = st.lists(st.tuples(st.sampled_from(["dep_a", "dep_b", "dép_ü", 'dep_"q"', "dep_e"]),
                                 st.one_of(st.none(), st.integers(1, 10**12))), max_size=40)


@settings(max_examples=200, deadline=None)
@given(applied_ops, st.integers(1, 5))
def test_applied_versions_equal_a_plain_dict_and_its_json(ops, buckets):
    applied, expected = AppliedVersions(buckets), {}
    for slug, version in ops:
        if version is None:
            applied.discard(slug)
            expected.pop(slug, None)
        else:
            applied.set(slug, version)
            expected[slug] = version
        assert json.loads(applied.to_json()) == expected
    assert applied.to_dict() == expected == dict(applied) and len(applied) == len(expected)
    assert all((slug in applied) == (slug in expected) for slug, _ in ops)


def test_one_change_of_10000_applied_versions_is_cheap():
    applied = AppliedVersions()
    for i in range(10_000):
        applied.set(f"dep_{i:05d}", 1)
    started = time.perf_counter()
    full = json.dumps(applied.to_dict(), separators=(",", ":"))
    full_ms = (time.perf_counter() - started) * 1000
    applied.to_json()
    timings = []
    for version in range(2, 12):
        applied.set("dep_00042", version)
        started = time.perf_counter()
        text = applied.to_json()
        timings.append((time.perf_counter() - started) * 1000)
    assert json.loads(text) == {**json.loads(full), "dep_00042": 11}
    one_ms = statistics.median(timings)
    print(f"\n10,000 applied versions: full encode {full_ms:.2f} ms, one change {one_ms:.3f} ms")
    assert one_ms < full_ms / 5


ENDPOINTS = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
MODELS = {f"mod_{i}": Model(f"mod_{i}", endpoint, f"name-{i}") for i, endpoint in enumerate(ENDPOINTS)}
route_ops = st.lists(st.tuples(st.sampled_from(["dep_1", "dep_2", "dep_3"]),
                               st.one_of(st.none(), st.tuples(st.sampled_from(sorted(MODELS)),
                                                              st.lists(st.sampled_from(sorted(MODELS)), max_size=2)))),
                     max_size=30)


@settings(max_examples=200, deadline=None)
@given(route_ops)
def test_endpoint_counts_equal_the_set_over_all_routes(ops):
    refs, routes = EndpointRefs(), {}
    for version, (slug, spec) in enumerate(ops, start=1):
        new = None
        if spec is not None:
            champion, challengers = spec
            deployment = Deployment(slug, "org_1", champion,
                                    tuple(Challenger(f"ch_{i}", m, 100) for i, m in enumerate(challengers)),
                                    False, version)
            new, _ = build_route(deployment, MODELS)
        before = table_endpoints(RoutingTable(0, routes))
        unused = refs.replace(routes.get(slug), new)
        if new is None:
            routes.pop(slug, None)
        else:
            routes[slug] = new
        after = table_endpoints(RoutingTable(0, routes))
        assert set(refs.counts) == after and unused == before - after
        assert all(count > 0 for count in refs.counts.values())


async def test_config_sync_changes_replay_to_the_table(etcd, layout):
    """Every table's changes, applied to the previous table's routes, give its routes; the
    applied map and the record's JSON follow."""
    replayed, checked = {}, []

    def on_changes(table, changes):
        for change in changes:
            assert replayed.get(change.slug) is change.old
            if change.new is None:
                replayed.pop(change.slug, None)
            else:
                replayed[change.slug] = change.new
        assert replayed == dict(table.routes)
        checked.append(table.revision)

    async def put(resource):
        key = layout.model(resource.model_id) if isinstance(resource, Model) else layout.deployment(resource.deployment_id)
        return await etcd.put(key, dumps(resource.to_json()))

    await put(Model("mod_a", ENDPOINTS[0], "a"))
    for i in range(5):
        await put(Deployment(f"dep_{i}", "org_1", "mod_a", (), False, 1))
    sync = ConfigSync(etcd, layout, on_changes=on_changes, settings=FAST)
    await sync.start()
    try:
        await asyncio.wait_for(sync.ready.wait(), 5)
        await put(Model("mod_b", ENDPOINTS[1], "b"))
        await put(Deployment("dep_1", "org_1", "mod_a", (Challenger("ch_1", "mod_b", 500),), False, 2))
        await etcd.delete(layout.deployment("dep_2"))
        await etcd.txn([], [put_op(layout.deployment("dep_3"), dumps(Deployment("dep_3", "org_1", "mod_b", (), False, 2).to_json())),
                            put_op(layout.deployment("dep_9"), dumps(Deployment("dep_9", "org_1", "mod_a", (), False, 1).to_json()))])
        last = await etcd.delete(layout.model("mod_a"))   # unroutes every deployment whose champion it is
        # The two prefixes are two watches: the models' batch at `last` may come before the
        # deployments' earlier ones, so wait for both, not for the revision alone.
        async with asyncio.timeout(5):
            while sync.revision < last or set(sync.table.routes) != {"dep_3"}:
                await asyncio.sleep(0.01)
    finally:
        await sync.stop()
    assert len(checked) >= 2 and replayed == dict(sync.table.routes) == {"dep_3": sync.table.routes["dep_3"]}
    assert sync.applied_versions() == {"dep_3": 2} == json.loads(sync.applied.to_json())


async def test_the_record_carries_the_cached_applied_json(etcd, layout):
    applied = AppliedVersions()
    for i in range(1000):
        applied.set(f"dep_{i:04d}", i + 1)
    stats = {"dep_0001": {"champion": {"model_id": "mod_a", "requests": 3}}}
    reg = Registration(etcd, layout, "r-cached", "router", "127.0.0.1:8001", "", lambda: applied, lambda: stats)
    await reg.start()
    try:
        record = json.loads((await etcd.get(layout.router("r-cached"))).value)
    finally:
        await reg.stop()
    assert record["applied"] == applied.to_dict() and record["stats"] == stats
    assert record["router_id"] == "r-cached" and record["updated_at"].endswith("Z")
    assert reg.record()["applied"] == applied.to_dict()
