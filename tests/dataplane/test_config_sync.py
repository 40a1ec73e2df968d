"""dataplane.config_sync against a real etcd: snapshot, watch, whole batches, outages,
compaction; and the incremental route book against a full rebuild."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config_sync import Backoff, ConfigSync, RouteBook, SyncSettings
from dataplane.routing import build_routing_table
from tsplit.testing import CuttableLink
from tsplit.etcd import Etcd, put_op, wait_until_ready
from tsplit.resources import Challenger, Deployment, Model, dumps

FAST = SyncSettings(backoff_start_s=0.02, backoff_cap_s=0.2)


def model(model_id: str, port: int = 9001) -> Model:
    return Model(model_id, f"127.0.0.1:{port}", f"name-{model_id}")


def deployment(slug: str, version: int = 1, champion: str = "mod_champ", challengers=(), shadow=False) -> Deployment:
    return Deployment(slug, "org_1", champion, tuple(challengers), shadow, version)


async def put_resource(etcd: Etcd, layout, resource) -> int:
    if isinstance(resource, Model):
        return await etcd.put(layout.model(resource.model_id), dumps(resource.to_json()))
    return await etcd.put(layout.deployment(resource.deployment_id), dumps(resource.to_json()))


class Tables:
    """Every table a ConfigSync swaps in, and a way to wait for one that fits."""

    def __init__(self) -> None:
        self.seen = []
        self.times = []
        self._changed = asyncio.Condition()

    def __call__(self, table) -> None:
        self.seen.append(table)
        self.times.append(time.perf_counter())
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate, timeout: float = 5.0):
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self.seen) and predicate(self.seen[-1]))
        return self.seen[-1]


def version_of(table, slug: str) -> int | None:
    route = table.lookup(slug)
    return route.cache_version if route else None


@pytest.fixture
async def sync_factory(etcd_endpoint, layout):
    started = []

    async def make(endpoint: str | None = None, **kw) -> tuple[ConfigSync, Tables]:
        client = Etcd(endpoint or etcd_endpoint, timeout=1.0)
        tables = Tables()
        sync = ConfigSync(client, layout, on_table=tables, settings=kw.pop("settings", FAST), **kw)
        started.append((sync, client))
        await sync.start()
        return sync, tables

    yield make
    for sync, client in started:
        await sync.stop()
        await client.close()


async def test_snapshot_then_watch(etcd, layout, sync_factory):
    await put_resource(etcd, layout, model("mod_champ"))
    await put_resource(etcd, layout, model("mod_ch"))
    await put_resource(etcd, layout, deployment("dep_a"))
    sync, tables = await sync_factory()
    assert (sync.table is None) == (not sync.ready.is_set())  # no table exactly until ready
    await asyncio.wait_for(sync.ready.wait(), 5)
    assert version_of(sync.table, "dep_a") == 1 and sync.applied_versions() == {"dep_a": 1}
    revision = await put_resource(etcd, layout, deployment("dep_a", 2, challengers=[Challenger("ch_1", "mod_ch", 1000)]))
    table = await tables.wait_for(lambda t: version_of(t, "dep_a") == 2)
    assert table is sync.table and sync.revision == revision == table.revision
    route = table.lookup("dep_a")
    assert [(v.name, v.weight_bp) for v in route.variants] == [("champion", 9000), ("ch_1", 1000)]
    assert sync.applied_versions() == {"dep_a": 2}
    await etcd.delete(layout.deployment("dep_a"))
    await tables.wait_for(lambda t: t.lookup("dep_a") is None)
    assert sync.applied_versions() == {} and sync.snapshots == 1


async def test_a_transaction_is_applied_as_one_table(etcd, layout, sync_factory):
    slugs = [f"dep_{i}" for i in range(5)]
    await put_resource(etcd, layout, model("mod_champ"))
    for slug in slugs:
        await put_resource(etcd, layout, deployment(slug, 1))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    before = len(tables.seen)
    for version in (2, 3):
        ops = [put_op(layout.deployment(s), dumps(deployment(s, version).to_json())) for s in slugs]
        ops.append(put_op(layout.history_version(slugs[0], version), b"{}"))  # inside the watched range
        await etcd.txn([], ops)
    await tables.wait_for(lambda t: version_of(t, slugs[-1]) == 3)
    new_tables = tables.seen[before:]
    # etcd may deliver both revisions in one watch response; then one table covers both.
    assert 1 <= len(new_tables) <= 2, "at most one table per transaction"
    for table in new_tables:
        assert len({version_of(table, s) for s in slugs}) == 1, "never a half-applied transaction"


async def test_model_change_rebuilds_only_the_routes_that_name_it(etcd, layout, sync_factory):
    await put_resource(etcd, layout, model("mod_champ", 9001))
    await put_resource(etcd, layout, model("mod_other", 9002))
    await put_resource(etcd, layout, deployment("dep_a"))
    await put_resource(etcd, layout, deployment("dep_b", champion="mod_other"))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    old = sync.table
    await put_resource(etcd, layout, model("mod_champ", 9011))
    table = await tables.wait_for(lambda t: t.lookup("dep_a").champion.endpoint.endswith(":9011"))
    assert table.lookup("dep_b") is old.lookup("dep_b"), "an untouched route is reused, not rebuilt"
    assert table.lookup("dep_a") is not old.lookup("dep_a")


async def test_a_deployment_waits_for_its_champion_model(etcd, layout, sync_factory):
    await put_resource(etcd, layout, deployment("dep_a", champion="mod_late"))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    assert sync.table.lookup("dep_a") is None and sync.table.problems
    await put_resource(etcd, layout, model("mod_late"))
    table = await tables.wait_for(lambda t: t.lookup("dep_a") is not None)
    assert table.problems == () and sync.applied_versions() == {"dep_a": 1}


async def test_values_that_do_not_parse_keep_the_last_good_config(etcd, layout, sync_factory):
    await put_resource(etcd, layout, model("mod_champ"))
    await put_resource(etcd, layout, deployment("dep_a", 1))
    await put_resource(etcd, layout, deployment("dep_b", 1))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    await etcd.put(layout.deployment("dep_a"), b"{not json")
    await etcd.put(layout.deployment("dep_b"), dumps({**deployment("dep_b", 2).to_json(), "deployment_id": "dep_zz"}))
    await etcd.put(layout.model("mod_champ"), dumps({"model_id": "mod_champ"}))
    marker = await put_resource(etcd, layout, deployment("dep_c", 1))
    table = await tables.wait_for(lambda t: t.lookup("dep_c") is not None)
    assert table.revision == marker
    assert version_of(table, "dep_a") == 1 and version_of(table, "dep_b") == 1
    assert table.lookup("dep_a").champion.endpoint == model("mod_champ").endpoint
    # a snapshot reload keeps the last good values as well
    sync2, _ = await sync_factory()
    await asyncio.wait_for(sync2.ready.wait(), 5)
    assert sync2.table.lookup("dep_a") is None, "a fresh router has no good value to keep"
    await put_resource(etcd, layout, deployment("dep_a", 5))
    await tables.wait_for(lambda t: version_of(t, "dep_a") == 5)


async def test_etcd_killed_the_table_stays_and_the_watch_resumes(etcd_private, layout, sync_factory):
    sync, tables = await sync_factory(etcd_private.endpoint)
    async with Etcd(etcd_private.endpoint, timeout=2.0) as writer:
        await put_resource(writer, layout, model("mod_champ"))
        await put_resource(writer, layout, deployment("dep_a", 1))
        await tables.wait_for(lambda t: version_of(t, "dep_a") == 1)
        table = sync.table
        etcd_private.kill()
        async with asyncio.timeout(5):  # the dead stream is noticed, not silently kept
            while sync.watch_failures == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(2.0)  # etcd down for a few seconds: several failed reconnects
        assert sync.table is table and version_of(sync.table, "dep_a") == 1
        failures_while_down = sync.watch_failures
        assert failures_while_down >= 2
        etcd_private.start()
        await wait_until_ready(writer, 5)  # the writer's own channel reconnects first
        await put_resource(writer, layout, deployment("dep_a", 2))
        await tables.wait_for(lambda t: version_of(t, "dep_a") == 2, timeout=10)
        await put_resource(writer, layout, deployment("dep_a", 3))
        await tables.wait_for(lambda t: version_of(t, "dep_a") == 3, timeout=5)
    assert sync.snapshots == 1, "resumed from the last revision, no reload needed"


async def test_not_ready_until_etcd_answers_the_first_snapshot(etcd_private, layout, sync_factory):
    etcd_private.stop()
    sync, tables = await sync_factory(etcd_private.endpoint)
    await asyncio.sleep(0.5)
    assert not sync.ready.is_set() and sync.table is None and sync.applied_versions() == {}
    assert sync.watch_failures >= 1
    etcd_private.start()
    async with Etcd(etcd_private.endpoint) as writer:
        await wait_until_ready(writer, 5)
        await put_resource(writer, layout, model("mod_champ"))
        await put_resource(writer, layout, deployment("dep_a", 3))
    await asyncio.wait_for(sync.ready.wait(), 5)
    await tables.wait_for(lambda t: version_of(t, "dep_a") == 3)
    assert sync.snapshots == 1


@pytest.fixture
async def proxy(etcd_private):
    link = await CuttableLink(etcd_private.endpoint).start()
    yield link
    await link.close()


async def test_a_change_made_while_disconnected_is_not_missed(etcd_private, layout, proxy, sync_factory):
    async with Etcd(etcd_private.endpoint) as writer:
        await put_resource(writer, layout, model("mod_champ"))
        await put_resource(writer, layout, deployment("dep_a", 1))
        sync, tables = await sync_factory(proxy.address)
        await tables.wait_for(lambda t: version_of(t, "dep_a") == 1)
        proxy.cut()
        async with asyncio.timeout(5):
            while sync.watch_failures == 0:
                await asyncio.sleep(0.02)
        await put_resource(writer, layout, deployment("dep_a", 2))
        await put_resource(writer, layout, deployment("dep_b", 1))
        await asyncio.sleep(0.3)
        assert version_of(sync.table, "dep_a") == 1
        proxy.restore()
        table = await tables.wait_for(lambda t: version_of(t, "dep_b") == 1, timeout=5)
    assert version_of(table, "dep_a") == 2
    assert sync.snapshots == 1, "caught up through the resumed watch, not a reload"


async def test_compaction_while_disconnected_reloads_the_snapshot(etcd_private, layout, proxy, sync_factory):
    async with Etcd(etcd_private.endpoint) as writer:
        await put_resource(writer, layout, model("mod_champ"))
        await put_resource(writer, layout, deployment("dep_a", 1))
        await put_resource(writer, layout, deployment("dep_gone", 1))
        sync, tables = await sync_factory(proxy.address)
        await tables.wait_for(lambda t: version_of(t, "dep_a") == 1)
        proxy.cut()
        for version in range(2, 6):
            await put_resource(writer, layout, deployment("dep_a", version))
        await writer.delete(layout.deployment("dep_gone"))
        latest = await put_resource(writer, layout, deployment("dep_new", 1))
        await writer.compact(latest)
        proxy.restore()
        table = await tables.wait_for(lambda t: version_of(t, "dep_new") == 1, timeout=10)
    assert sync.snapshots == 2
    assert version_of(table, "dep_a") == 5 and table.lookup("dep_gone") is None
    assert table.revision == latest and sync.applied_versions() == {"dep_a": 5, "dep_new": 1}


async def test_propagation_is_fast(etcd, layout, sync_factory):
    await put_resource(etcd, layout, model("mod_champ"))
    for i in range(200):
        await put_resource(etcd, layout, deployment(f"dep_{i:03d}", 1))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    delays = []
    for version in range(2, 42):
        before = time.perf_counter()
        await put_resource(etcd, layout, deployment("dep_007", version))
        await tables.wait_for(lambda t: version_of(t, "dep_007") == version)
        delays.append((tables.times[-1] - before) * 1000)
    median, worst = statistics.median(delays), max(delays)
    print(f"\nput-to-table propagation: median {median:.2f} ms, max {worst:.2f} ms over {len(delays)} changes")
    assert median < 50


# Pure parts.

def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(0.05, 1.0, rng=lambda: 1.0)
    delays = [backoff.next() for _ in range(8)]
    assert delays[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8]) and delays[5:] == [1.0] * 3
    backoff.reset()
    assert backoff.next() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        Backoff(0, 1)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 0.5), st.floats(1.0, 5.0), st.lists(st.floats(0, 0.999), min_size=1, max_size=40))
def test_backoff_stays_within_jittered_bounds(start, cap, draws):
    values = iter(draws)
    backoff = Backoff(start, cap, rng=lambda: next(values))
    for attempt in range(len(draws)):
        base = min(cap, start * 2 ** attempt)
        assert base / 2 <= backoff.next() <= base


def test_rebuilding_one_of_10000_deployments_is_cheap():
    book = RouteBook()
    for i in range(50):
        book.put_model(model(f"mod_{i}", 9000 + i))
    for i in range(10_000):
        book.put_deployment(deployment(f"dep_{i:05d}", 1, champion=f"mod_{i % 50}",
                                       challengers=[Challenger("ch_a", f"mod_{(i + 1) % 50}", 500)]))
    started = time.perf_counter()
    book.table(1)
    full_ms = (time.perf_counter() - started) * 1000
    timings = []
    for version in range(2, 12):
        book.put_deployment(deployment("dep_00042", version, champion="mod_3"))
        started = time.perf_counter()
        table = book.table(version)
        timings.append((time.perf_counter() - started) * 1000)
    assert version_of(table, "dep_00042") == 11 and len(table.routes) == 10_000
    one_ms = statistics.median(timings)
    print(f"\n10,000 deployments: full build {full_ms:.1f} ms, one change {one_ms:.2f} ms")
    assert one_ms < full_ms / 5


# The incremental book must always equal a full rebuild of the same resources.
model_ids = st.sampled_from(["mod_a", "mod_b", "mod_c", "mod_d"])
slugs = st.sampled_from(["dep_1", "dep_2", "dep_3"])
operations = st.one_of(
    st.tuples(st.just("model"), model_ids, st.integers(9000, 9003)),
    st.tuples(st.just("del_model"), model_ids),
    st.tuples(st.just("deployment"), slugs, model_ids, st.lists(st.tuples(model_ids, st.integers(1, 25), st.booleans()),
                                                                   max_size=3), st.booleans()),
    st.tuples(st.just("del_deployment"), slugs),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(operations, min_size=1, max_size=4), min_size=1, max_size=8))
def test_incremental_book_equals_a_full_build(batches):
    book = RouteBook()
    version = 0
    for revision, batch in enumerate(batches, start=1):
        for op in batch:
            if op[0] == "model":
                book.put_model(model(op[1], op[2]))
            elif op[0] == "del_model":
                book.delete_model(op[1])
            elif op[0] == "deployment":
                version += 1
                challengers = [Challenger(f"ch_{i}", m, pct * 100, active) for i, (m, pct, active) in enumerate(op[3])]
                book.put_deployment(deployment(op[1], version, champion=op[2], challengers=challengers, shadow=op[4]))
            else:
                book.delete_deployment(op[1])
        incremental = book.table(revision)
        full = build_routing_table(book.deployments.values(), dict(book.models), revision)
        assert dict(incremental.routes) == dict(full.routes)
        assert sorted(incremental.problems) == sorted(full.problems)


async def test_history_records_and_router_keys_never_reach_the_watch(etcd, layout, sync_factory):
    """SPEC section 6: routers watch deployments and models only. The watch of a range that
    spans history would see these writes (and advance its revision); ours sees none."""
    await put_resource(etcd, layout, model("mod_champ"))
    await put_resource(etcd, layout, deployment("dep_w"))
    sync, tables = await sync_factory()
    await asyncio.wait_for(sync.ready.wait(), 5)
    watched = sync.revision
    for n in range(2, 12):
        await etcd.put(layout.history_version("dep_w", n), b"{}")
        await etcd.put(layout.request("dep_w", f"r-{n}"), b"{}")
        await etcd.put(layout.router(f"r-{n}"), b"{}")
    await asyncio.sleep(0.3)
    assert sync.revision == watched and sync.tables_built == 1
    revision = await put_resource(etcd, layout, deployment("dep_w", 2))
    await tables.wait_for(lambda t: version_of(t, "dep_w") == 2)
    assert sync.revision == revision


async def test_an_unexpected_error_reloads_the_snapshot_instead_of_stopping(etcd, layout, sync_factory):
    await put_resource(etcd, layout, model("mod_champ"))
    await put_resource(etcd, layout, deployment("dep_a", 1))
    sync, tables = await sync_factory()
    await tables.wait_for(lambda t: version_of(t, "dep_a") == 1)
    apply_batch, calls = sync._apply_batch, []

    def first_batch_fails(batch) -> None:
        calls.append(batch)
        if len(calls) == 1:  # stands for a bug anywhere in the watch loop
            raise RuntimeError("unexpected")
        apply_batch(batch)

    sync._apply_batch = first_batch_fails
    await put_resource(etcd, layout, deployment("dep_a", 2))
    await tables.wait_for(lambda t: version_of(t, "dep_a") == 2)
    assert sync.watch_failures == 1 and sync.snapshots == 2  # the lost batch came back by the reload
    await put_resource(etcd, layout, deployment("dep_a", 3))
    await tables.wait_for(lambda t: version_of(t, "dep_a") == 3)
    assert len(calls) >= 2
