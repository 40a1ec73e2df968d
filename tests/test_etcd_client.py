"""tsplit.etcd against a real etcd: reads, transactions, leases, watch, compaction."""

from __future__ import annotations

import asyncio

import pytest

from tsplit.etcd import (
    Etcd, EtcdUnavailable, WatchCompacted, key_missing, mod_revision_is, prefix_range_end, put_op,
)


def test_prefix_range_end():
    assert prefix_range_end("/a/") == b"/a0"
    assert prefix_range_end("a\xff") != b""


async def test_put_get_prefix_and_txn(etcd, layout):
    key = layout.deployment("dep_a")
    await etcd.put(key, b"1")
    kv = await etcd.get(key)
    assert kv.value == b"1"
    lost = await etcd.txn([mod_revision_is(key, kv.mod_revision - 1)], [put_op(key, b"x")])
    assert not lost.succeeded
    won = await etcd.txn([mod_revision_is(key, kv.mod_revision)], [put_op(key, b"2")])
    assert won.succeeded
    assert (await etcd.get(key)).value == b"2"
    created = await etcd.txn([key_missing(layout.deployment("dep_b"))], [put_op(layout.deployment("dep_b"), b"3")])
    assert created.succeeded
    kvs, revision = await etcd.get_prefix(layout.deployments)
    assert [k.key for k in kvs] == [layout.deployment("dep_a"), layout.deployment("dep_b")]
    assert revision >= won.revision


async def test_watch_sees_changes_from_revision(etcd, layout):
    _, start = await etcd.get_prefix(layout.prefix + "/")
    await etcd.put(layout.model("m1"), b"a")
    await etcd.put(layout.model("m2"), b"b")
    seen = []

    async def collect():
        async for batch in etcd.watch_prefix(layout.prefix + "/", start + 1):
            seen.extend(batch.events)
            if len(seen) >= 3:
                return

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.1)
    await etcd.delete(layout.model("m1"))
    await asyncio.wait_for(task, 5)
    assert [(e.kind, e.key) for e in seen] == [
        ("put", layout.model("m1")), ("put", layout.model("m2")), ("delete", layout.model("m1"))]


async def test_lease_keys_vanish_on_revoke(etcd, layout):
    lease = await etcd.lease_grant(5)
    assert await etcd.lease_keepalive(lease) > 0
    await etcd.put(layout.router("r1"), b"{}", lease=lease)
    await etcd.lease_revoke(lease)
    assert await etcd.get(layout.router("r1")) is None


async def test_watch_from_compacted_revision_raises(etcd_private, layout):
    async with Etcd(etcd_private.endpoint) as etcd:
        first = await etcd.put(layout.model("m"), b"1")
        latest = await etcd.put(layout.model("m"), b"2")
        await etcd.compact(latest)
        with pytest.raises(WatchCompacted):
            async for _ in etcd.watch_prefix(layout.prefix + "/", first):
                pass


async def test_unreachable_etcd_is_unavailable(etcd_private):
    async with Etcd(etcd_private.endpoint, timeout=1.0) as etcd:
        etcd_private.stop()
        with pytest.raises(EtcdUnavailable):
            await etcd.put("/x", b"1")


async def test_watch_stream_ends_when_etcd_stops(etcd_private, layout):
    async with Etcd(etcd_private.endpoint) as etcd:
        start = await etcd.revision()

        async def consume():
            async for _ in etcd.watch_prefix(layout.prefix + "/", start + 1):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        etcd_private.stop()
        with pytest.raises(EtcdUnavailable):
            await asyncio.wait_for(task, 15)
