"""The store's group commit against a real etcd: concurrent changes of one deployment share
transactions yet each gets its own version, history entry and answer; lost answers, a full
transaction, a deadline passed in the queue, two replicas, and the models cache."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.actions import apply_traffic_action, parse_traffic_action
from controlplane.store import ControlPlaneStore, StoreSettings
from tsplit.errors import ApiError
from tsplit.etcd import EtcdUnavailable
from tsplit.resources import Model

FAST = StoreSettings(retry_deadline_s=5, resolve_deadline_s=1, write_timeout_s=1)


class CountingEtcd:
    """The real client, counting write transactions (those that put more than one key);
    with to_lose = n the answers of the next n writes are lost (after committing, when
    commit is set)."""

    def __init__(self, etcd):
        self.etcd, self.writes, self.to_lose, self.commit = etcd, 0, 0, True
        self.silent_after_loss = False  # after a lost answer, every transaction fails (etcd gone quiet)
        self.fail_rest = False

    def __getattr__(self, name):
        return getattr(self.etcd, name)

    async def txn(self, compare, success, failure=()):
        if self.fail_rest:
            raise EtcdUnavailable("injected: etcd does not answer")
        if len(success) > 1:
            self.writes += 1
            if self.to_lose:
                self.to_lose -= 1
                if self.commit:
                    await self.etcd.txn(compare, success, failure)
                self.fail_rest = self.silent_after_loss
                raise EtcdUnavailable("injected: the answer was lost")
        return await self.etcd.txn(compare, success, failure)


def traffic(body: dict):
    return lambda deployment, models: apply_traffic_action(deployment, parse_traffic_action(body), models)


async def setup_deployment(store: ControlPlaneStore, challengers: int = 4, slug: str = "dep_g") -> list[str]:
    """slug with `challengers` challengers at 1 %; their ids."""
    for i in range(challengers + 1):
        model_id = f"mod_g{i:05d}"
        if await store.org_models("org_1") and model_id in await store.org_models("org_1"):
            continue
        await store.register_model("org_1", Model(model_id, "127.0.0.1:9001", f"m{i}", "", "org_1"),
                                   actor="u", request_id=f"reg-{i}", request_body={"i": i})
    await store.create_deployment("org_1", slug, "mod_g00000", actor="u", request_id=f"create-{slug}",
                                  request_body={"deployment_id": slug})
    ids = []
    for i in range(1, challengers + 1):
        body = {"action": "add_challenger", "model_id": f"mod_g{i:05d}", "traffic_pct": 1}
        result = await change(store, body, f"add-{i}", slug=slug)
        ids.append(result.challenger.id)
    return ids


async def change(store, body, request_id, slug: str = "dep_g", **kw):
    return await store.change_deployment(
        "org_1", slug, traffic(body), action=body["action"], request_body=body, actor="writer",
        request_id=request_id, **kw)


async def versions(store, slug: str = "dep_g") -> list[tuple[int, str]]:
    return [(e.cache_version, e.request_id) for e in await store.history("org_1", slug)]


async def test_concurrent_changes_share_transactions_each_with_its_own_version(etcd, layout):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, FAST)
    ids = await setup_deployment(store)
    start = (await store.get_deployment("org_1", "dep_g")).cache_version
    counting.writes = 0
    bodies = [{"action": "update_traffic", "challenger_id": ids[i % 4], "traffic_pct": 2 + i % 7} for i in range(24)]
    bodies[5] = {"action": "update_traffic", "challenger_id": ids[0], "traffic_pct": 49}  # over 50 in total
    results = await asyncio.gather(*(change(store, b, f"c-{i}") for i, b in enumerate(bodies)), return_exceptions=True)

    failed = [i for i, r in enumerate(results) if isinstance(r, ApiError)]
    assert failed == [5] and results[5].code == "invalid_traffic_config"
    written = sorted((r.deployment.cache_version, f"c-{i}") for i, r in enumerate(results) if i != 5 and r.changed)
    assert [v for v, _ in written] == list(range(start + 1, start + 1 + len(written)))
    assert (await versions(store))[-len(written):] == written
    assert counting.writes < len(written)  # batched: fewer transactions than versions
    final = await store.get_deployment("org_1", "dep_g")
    assert final == max((r for r in results if not isinstance(r, ApiError)), key=lambda r: r.deployment.cache_version).deployment


async def test_the_same_request_id_twice_in_one_batch_applies_once(etcd, layout):
    store = ControlPlaneStore(etcd, layout, FAST)
    await setup_deployment(store, challengers=1)
    toggle = {"action": "toggle_shadow", "shadow_mode": True}
    first, second, other = await asyncio.gather(
        change(store, toggle, "twice"), change(store, toggle, "twice"),
        change(store, {"action": "toggle_shadow", "shadow_mode": False}, "twice"), return_exceptions=True)
    assert first.changed and second.replayed and second.deployment == first.deployment
    assert isinstance(other, ApiError) and other.code == "invalid_request"
    assert [r for _, r in await versions(store)].count("twice") == 1


@pytest.mark.parametrize("committed", [True, False])
async def test_a_lost_answer_of_a_batch_is_resolved_for_all_its_changes(etcd, layout, committed):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, FAST)
    ids = await setup_deployment(store)
    counting.to_lose, counting.commit = 1, committed
    bodies = [{"action": "update_traffic", "challenger_id": c, "traffic_pct": 3} for c in ids]
    results = await asyncio.gather(*(change(store, b, f"lost-{i}") for i, b in enumerate(bodies)))
    assert all(r.changed for r in results) and counting.to_lose == 0
    history = await versions(store)
    assert [v for v, _ in history] == list(range(1, len(history) + 1))
    assert sorted(r for _, r in history[-4:]) == [f"lost-{i}" for i in range(4)]


async def test_an_unknown_outcome_is_commit_unknown_for_writers_and_unavailable_for_the_rest(etcd, layout):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, FAST)
    ids = await setup_deployment(store)
    before = await versions(store)
    counting.to_lose, counting.commit, counting.silent_after_loss = 1, False, True
    good = {"action": "toggle_shadow", "shadow_mode": True}
    bad = {"action": "update_traffic", "challenger_id": ids[0], "traffic_pct": 60}  # a 422 on its own
    outcomes = await asyncio.gather(change(store, good, "unknown-1"), change(store, bad, "bad-1"),
                                    return_exceptions=True)
    assert [o.code for o in outcomes] == ["commit_unknown", "unavailable"]
    assert "request_id" in outcomes[0].message and "nothing was written" in outcomes[1].message
    counting.fail_rest = False
    assert await versions(store) == before  # it did not commit
    retried = await change(store, good, "unknown-1")  # the retry with the same key applies it once
    assert retried.changed and (await versions(store))[-1] == (before[-1][0] + 1, "unknown-1")


async def test_a_full_transaction_leaves_the_rest_to_the_next(etcd, layout):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, StoreSettings(max_txn_bytes=8000, retry_deadline_s=5))
    ids = await setup_deployment(store)
    counting.writes = 0
    results = await asyncio.gather(*(
        change(store, {"action": "update_traffic", "challenger_id": ids[i % 4], "traffic_pct": 2 + i}, f"big-{i}")
        for i in range(8)))
    assert all(r.changed for r in results)
    assert 1 < counting.writes < 8
    history = await versions(store)
    assert [v for v, _ in history] == list(range(1, len(history) + 1))


async def test_a_change_whose_deadline_passed_in_the_queue_writes_nothing(etcd, layout):
    store = ControlPlaneStore(etcd, layout, FAST)
    await setup_deployment(store, challengers=1)
    before = await versions(store)
    with pytest.raises(ApiError) as err:
        await change(store, {"action": "toggle_shadow", "shadow_mode": True}, "late", deadline_s=0)
    assert err.value.code == "unavailable" and "nothing was written" in err.value.message
    assert await versions(store) == before


async def test_two_replicas_batching_at_once_lose_nothing(etcd, layout):
    first, second = ControlPlaneStore(etcd, layout, FAST), ControlPlaneStore(etcd, layout, FAST)
    ids = await setup_deployment(first)
    start = (await first.get_deployment("org_1", "dep_g")).cache_version
    last = {}

    async def writer(store, n):
        for round_ in range(5):
            pct = 2 + (n + round_) % 5
            result = await change(store, {"action": "update_traffic", "challenger_id": ids[n], "traffic_pct": pct},
                                  f"w{n}-{round_}")
            assert result.changed or result.deployment.challenger(ids[n]).traffic_pct == pct
            last[ids[n]] = pct

    await asyncio.gather(*(writer(first if n % 2 else second, n) for n in range(4)))
    history = await versions(first)
    assert [v for v, _ in history] == list(range(1, len(history) + 1))
    final = await first.get_deployment("org_1", "dep_g")
    assert final.cache_version == len(history) > start
    assert {c: final.challenger(c).traffic_pct for c in ids} == last


async def test_models_registered_elsewhere_are_found_and_deleted_ones_are_not(etcd, layout):
    store, replica = ControlPlaneStore(etcd, layout, FAST), ControlPlaneStore(etcd, layout, FAST)
    await setup_deployment(store, challengers=1)  # store's models table is loaded now
    await replica.register_model("org_1", Model("mod_late0001", "127.0.0.1:9001", "late", "", "org_1"),
                                 actor="u", request_id="late", request_body={})
    added = await change(store, {"action": "add_challenger", "model_id": "mod_late0001", "traffic_pct": 2}, "add-late")
    assert added.changed and added.challenger.model_id == "mod_late0001"

    await replica.register_model("org_1", Model("mod_gone0001", "127.0.0.1:9001", "gone", "", "org_1"),
                                 actor="u", request_id="gone", request_body={})
    gone = await change(store, {"action": "add_challenger", "model_id": "mod_gone0001", "traffic_pct": 2}, "add-g")
    await change(store, {"action": "remove_challenger", "challenger_id": gone.challenger.id}, "remove-g")
    await etcd.delete(layout.model("mod_gone0001"))  # behind the control plane's back
    with pytest.raises(ApiError) as err:  # an unknown model: refreshed, then refused
        await change(store, {"action": "add_challenger", "model_id": "mod_unknown1", "traffic_pct": 2}, "add-x")
    assert err.value.code == "invalid_traffic_config" and "model_id" in err.value.message
    with pytest.raises(ApiError) as err:  # that refresh counted one key less: reloaded, gone
        await change(store, {"action": "add_challenger", "model_id": "mod_gone0001", "traffic_pct": 2}, "add-g2")
    assert err.value.code == "invalid_traffic_config"


class FrozenReads:
    """The real client, but reads of one key hang (a frozen etcd, as a reader sees it)."""

    def __init__(self, etcd, key: str):
        self.etcd, self.key, self.frozen = etcd, key, False

    def __getattr__(self, name):
        return getattr(self.etcd, name)

    async def get(self, key):
        if self.frozen and key == self.key:
            await asyncio.sleep(30)
        return await self.etcd.get(key)


async def test_queueing_never_delays_unavailable_past_the_read_timeout(etcd, layout):
    """Each change's first read ends read_timeout_s after the change arrived, however long it
    queued behind a batch stuck on a frozen etcd: 503 within the SPEC's 5 s."""
    frozen = FrozenReads(etcd, layout.deployment("dep_g"))
    store = ControlPlaneStore(frozen, layout, StoreSettings(read_timeout_s=1.0, retry_deadline_s=5))
    await setup_deployment(store, challengers=1)
    before = await versions(store)
    frozen.frozen = True
    loop = asyncio.get_running_loop()

    async def timed(request_id: str, delay: float) -> tuple[str, float]:
        await asyncio.sleep(delay)
        arrived = loop.time()
        with pytest.raises(ApiError) as err:
            await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id)
        return err.value.code, loop.time() - arrived

    answers = await asyncio.wait_for(asyncio.gather(timed("first", 0), timed("queued", 0.3)), 10)
    assert [code for code, _ in answers] == ["unavailable", "unavailable"]
    assert all(0.3 < waited < 1.4 for _, waited in answers), answers
    frozen.frozen = False
    assert await versions(store) == before


async def test_changes_of_several_deployments_share_transactions(etcd, layout):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, FAST)
    slugs = [f"dep_m{i}" for i in range(8)]
    ids = {slug: (await setup_deployment(store, challengers=1, slug=slug))[0] for slug in slugs}
    counting.writes = 0
    results = await asyncio.gather(*(
        change(store, {"action": "update_traffic", "challenger_id": ids[slug], "traffic_pct": 2 + n}, f"{slug}-{n}",
               slug=slug)
        for n in range(3) for slug in slugs))
    assert all(r.changed for r in results)
    assert counting.writes < len(slugs)  # fewer transactions than deployments, let alone changes
    for slug in slugs:
        history = await versions(store, slug)
        assert [v for v, _ in history] == list(range(1, len(history) + 1))
        assert [r for _, r in history[-3:]] == [f"{slug}-{n}" for n in range(3)]  # in arrival order
        assert (await store.get_deployment("org_1", slug)).challenger(ids[slug]).traffic_pct == 4


async def test_two_replicas_on_several_deployments_lose_nothing(etcd, layout):
    first, second = ControlPlaneStore(etcd, layout, FAST), ControlPlaneStore(etcd, layout, FAST)
    slugs = [f"dep_r{i}" for i in range(3)]
    ids = {slug: await setup_deployment(first, challengers=2, slug=slug) for slug in slugs}
    last: dict[tuple[str, str], float] = {}

    async def writer(store, slug, challenger, n):
        for round_ in range(4):
            pct = 2 + (n + round_) % 5
            result = await change(store, {"action": "update_traffic", "challenger_id": challenger, "traffic_pct": pct},
                                  f"{slug}-{challenger}-{round_}", slug=slug)
            assert result.deployment.challenger(challenger).traffic_pct == pct
            last[(slug, challenger)] = pct

    await asyncio.gather(*(writer(first if n % 2 else second, slug, c, n)
                           for slug in slugs for n, c in enumerate(ids[slug])))
    for slug in slugs:
        history = await versions(first, slug)
        assert [v for v, _ in history] == list(range(1, len(history) + 1))
        final = await first.get_deployment("org_1", slug)
        assert final.cache_version == len(history)
        assert {c: final.challenger(c).traffic_pct for c in ids[slug]} == {c: last[(slug, c)] for c in ids[slug]}


async def test_a_rollback_is_first_of_its_deployment_in_a_transaction(etcd, layout):
    """A rollback reads committed history: queued behind an uncommitted version of its own
    deployment it waits for the next transaction, so "roll back to the version just made"
    works even when both were sent at once."""
    from controlplane.actions import rollback_to
    store = ControlPlaneStore(etcd, layout, FAST)
    ids = await setup_deployment(store, challengers=1)
    version = (await store.get_deployment("org_1", "dep_g")).cache_version

    async def rollback_mutate(deployment, models):
        target = await store.history_config("org_1", "dep_g", version + 1)
        assert target is not None, "version to roll back to not committed yet"
        return rollback_to(deployment, target), None

    bump = change(store, {"action": "update_traffic", "challenger_id": ids[0], "traffic_pct": 7}, "bump")
    back = store.change_deployment("org_1", "dep_g", rollback_mutate, action="rollback",
                                   request_body={"to_version": version + 1}, actor="u", request_id="back", solo=True)
    bumped, rolled = await asyncio.gather(bump, back)
    assert bumped.deployment.cache_version == version + 1
    assert not rolled.changed and rolled.deployment.cache_version == version + 1  # already that config


async def test_batch_stats_count_the_changes_per_transaction(etcd, layout, caplog):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, FAST)
    ids = await setup_deployment(store)
    stats = store._group.stats
    stats.batches = stats.changes = stats.largest = 0
    counting.writes = 0
    await asyncio.gather(*(change(store, {"action": "update_traffic", "challenger_id": ids[i % 4],
                                          "traffic_pct": 2 + i % 5}, f"s-{i}") for i in range(16)))
    assert stats.changes == 16 and stats.batches == counting.writes < 16
    assert stats.largest > 1
    stats.log_every_s = 0.0  # the next batch writes the summary line, and the counts start over
    with caplog.at_level("INFO", logger="controlplane.group_commit"):
        await change(store, {"action": "update_traffic", "challenger_id": ids[0], "traffic_pct": 9}, "s-last")
    assert any("changes per batch" in r.getMessage() for r in caplog.records)
    assert stats.batches == 0 and stats.changes == 0


async def test_linger_waits_for_a_full_batch_only_after_batches_of_several(etcd, layout):
    counting = CountingEtcd(etcd)
    store = ControlPlaneStore(counting, layout, StoreSettings(retry_deadline_s=5, resolve_deadline_s=1, linger_s=0.5))
    ids = await setup_deployment(store)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(3):  # a lone client: batches of one never linger
        await change(store, {"action": "update_traffic", "challenger_id": ids[0], "traffic_pct": 2 + i}, f"lone-{i}")
    assert loop.time() - started < 0.4

    def burst(tag: str):
        return asyncio.gather(*(change(store, {"action": "update_traffic", "challenger_id": ids[i % 4],
                                               "traffic_pct": 6 + i}, f"{tag}-{i}") for i in range(8)))

    await burst("a")  # answered at once; the worker then lingers for as many changes
    counting.writes = 0
    started = loop.time()
    results = await burst("b")
    assert loop.time() - started < 0.4  # 8 queued again: taken without waiting out the linger
    assert all(r.changed for r in results) and counting.writes == 1
