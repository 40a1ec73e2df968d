"""etcd's own speed, measured with the project's client library (tsplit.etcd): put latency,
put-to-watch-event latency, and the transaction rate of 16 concurrent writers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tsplit import etcd as etcd_mod
from tsplit.etcd import Etcd


@dataclass(frozen=True)
class WatchLatencies:
    put_ms: list[float]  # put sent -> put acknowledged
    put_to_event_ms: list[float]  # put sent -> watch event received
    ack_to_event_ms: list[float]  # put acknowledged -> watch event received (may be < 0)


async def put_to_watch(etcd: Etcd, prefix: str, count: int, pause_s: float = 0.005) -> WatchLatencies:
    """count sequential puts under prefix, each timed to its own watch event."""
    arrived: dict[str, float] = {}
    waiters: dict[str, asyncio.Event] = {}
    start_rev = await etcd.revision() + 1

    async def watch() -> None:
        async for batch in etcd.watch_prefix(prefix, start_rev):
            now = time.perf_counter()
            for event in batch.events:
                arrived[event.key] = now
                if event.key in waiters:
                    waiters[event.key].set()

    task = asyncio.create_task(watch())
    put_ms, to_event, ack_to_event = [], [], []
    try:
        await asyncio.sleep(0.2)  # the watch is created before the first put
        for i in range(count):
            key = f"{prefix}{i:08d}"
            waiters[key] = asyncio.Event()
            sent = time.perf_counter()
            await etcd.put(key, b'{"bench": true}')
            acked = time.perf_counter()
            await asyncio.wait_for(waiters[key].wait(), timeout=5)
            put_ms.append((acked - sent) * 1000)
            to_event.append((arrived[key] - sent) * 1000)
            ack_to_event.append((arrived[key] - acked) * 1000)
            await asyncio.sleep(pause_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await etcd.delete_prefix(prefix)
    return WatchLatencies(put_ms, to_event, ack_to_event)


async def txn_rate(etcd: Etcd, prefix: str, writers: int, duration_s: float) -> dict:
    """Committed transactions per second of `writers` concurrent tasks on one client.

    Each transaction is the shape of a control-plane change: compare the deployment key's
    mod_revision, then put the deployment and a history record. Each writer has its own
    key, so every transaction commits (etcd's rate, not a contention figure)."""
    deadline = time.perf_counter() + duration_s
    committed = failed = 0

    async def writer(n: int) -> None:
        nonlocal committed, failed
        key = f"{prefix}dep/{n}"
        revision = 0
        version = 0
        while time.perf_counter() < deadline:
            version += 1
            result = await etcd.txn(
                [etcd_mod.mod_revision_is(key, revision)],
                [etcd_mod.put_op(key, b'{"v": %d}' % version),
                 etcd_mod.put_op(f"{prefix}history/{n}/{version:010d}", b'{"v": %d}' % version)])
            if result.succeeded:
                committed += 1
                revision = result.revision
            else:
                failed += 1
                kv = await etcd.get(key)
                revision = kv.mod_revision if kv else 0

    start = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    elapsed = time.perf_counter() - start
    await etcd.delete_prefix(prefix)
    return {"writers": writers, "seconds": round(elapsed, 3), "committed": committed,
            "compare_failed": failed, "txn_per_s": committed / elapsed}
