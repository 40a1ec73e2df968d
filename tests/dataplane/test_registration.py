"""dataplane.registration against a real etcd: the lease-bound router record."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane.registration import Registration, RegistrationSettings
from tsplit.etcd import Etcd, EtcdUnavailable
from tsplit.status import empty_buckets

REPO = Path(__file__).resolve().parents[2]
FAST = RegistrationSettings(lease_ttl_s=2, backoff_start_s=0.02, backoff_cap_s=0.2)


class Source:
    """What a router hands the registration: applied versions and counters it can change."""

    def __init__(self) -> None:
        self.applied = {"dep_a": 1}
        self.requests = 0

    def applied_versions(self) -> dict[str, int]:
        return dict(self.applied)

    def stats(self) -> dict:
        return {"dep_a": {"champion": {"model_id": "mod_a", "requests": self.requests, "ok": self.requests,
                                       "errors": 0, "latency_buckets": empty_buckets()}}}


@pytest.fixture
async def register(etcd_endpoint, layout):
    made = []

    async def make(router_id: str = "r-1", endpoint: str | None = None, settings=FAST, source=None):
        client = Etcd(endpoint or etcd_endpoint, timeout=1.0)
        source = source or Source()
        reg = Registration(client, layout, router_id, "router", "127.0.0.1:8001", "http://127.0.0.1:9101/metrics",
                           source.applied_versions, source.stats, settings)
        made.append((reg, client))
        await reg.start()
        return reg, source

    yield make
    for reg, client in made:
        await reg.stop()
        await client.close()


async def read_record(etcd, layout, router_id: str = "r-1"):
    kv = await etcd.get(layout.router(router_id))
    return (json.loads(kv.value), kv) if kv else (None, None)


async def eventually(check, timeout: float, interval: float = 0.02):
    """Await check() until it returns something truthy; bounded in time and count. A
    reader whose etcd just came back may fail fast for a moment: that counts as not yet."""
    last_error = None
    for _ in range(int(timeout / interval) + 1):
        try:
            result = await check()
        except EtcdUnavailable as err:
            result, last_error = None, err
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"not true within {timeout} s (last etcd error: {last_error})")


async def test_record_appears_under_the_lease_with_the_agreed_fields(etcd, layout, register):
    reg, source = await register()
    record, kv = await read_record(etcd, layout)
    assert kv.lease == reg.lease_id != 0
    assert record["router_id"] == "r-1" and record["kind"] == "router"
    assert record["address"] == "127.0.0.1:8001" and record["metrics_url"] == "http://127.0.0.1:9101/metrics"
    assert record["applied"] == source.applied and record["stats"] == source.stats()
    assert isinstance(record["pid"], int) and record["started_at"].endswith("Z") and record["updated_at"].endswith("Z")


async def test_notify_applied_rewrites_at_once(etcd, layout, register):
    reg, source = await register()
    start_revision = await etcd.revision()
    delays = []
    for version in range(2, 12):
        seen = asyncio.get_running_loop().create_future()

        async def watch():
            async for batch in etcd.watch_prefix(layout.router("r-1"), start_revision + 1):
                for event in batch.events:
                    if json.loads(event.value)["applied"].get("dep_a") == version:
                        seen.set_result(time.perf_counter())
                        return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.05)  # let the watch be created
        source.applied["dep_a"] = version
        notified = time.perf_counter()
        reg.notify_applied()
        delays.append((await asyncio.wait_for(seen, 1.0) - notified) * 1000)
        watcher.cancel()
        start_revision = await etcd.revision()
    delays.sort()
    print(f"\nnotify_applied -> record in etcd: median {delays[5]:.1f} ms, max {delays[-1]:.1f} ms")
    # The 100 ms figure is a benchmark target (scripts/bench); on a loaded CI machine a single
    # fsync can take longer. What this test pins down is that a notify triggers the write at
    # once: typically well under 100 ms, always sooner than the 1 s periodic refresh.
    assert delays[5] < 100
    assert delays[-1] < 900


async def test_counters_are_refreshed_every_second_without_a_notify(etcd, layout, register):
    reg, source = await register()
    first, _ = await read_record(etcd, layout)
    source.requests = 17

    async def refreshed():
        record, _ = await read_record(etcd, layout)
        return record if record["stats"]["dep_a"]["champion"]["requests"] == 17 else None

    started = time.perf_counter()
    record = await eventually(refreshed, timeout=2.0)
    assert time.perf_counter() - started < 1.5
    assert record["updated_at"] > first["updated_at"] and record["started_at"] == first["started_at"]


async def test_stop_revokes_the_lease_and_the_record_goes(etcd, layout, register):
    reg, _ = await register()
    lease = reg.lease_id
    assert (await read_record(etcd, layout))[0] is not None
    await reg.stop()
    assert (await read_record(etcd, layout))[0] is None
    assert await etcd.lease_keepalive(lease) == 0


_CHILD = """
import asyncio, sys
from dataplane.registration import Registration, RegistrationSettings
from tsplit.etcd import Etcd, EtcdUnavailable
from tsplit.layout import Layout

async def main():
    reg = Registration(Etcd(sys.argv[1]), Layout(sys.argv[2]), "r-child", "client", "", "", dict, dict,
                       RegistrationSettings(lease_ttl_s=2))
    await reg.start()
    print("registered", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_dead_process_disappears_after_the_ttl(etcd, etcd_endpoint, layout):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, etcd_endpoint, layout.prefix],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20)
        assert line.strip() == "registered"
        record, kv = await read_record(etcd, layout, "r-child")
        assert record["kind"] == "client" and record["pid"] == child.pid and kv.lease
        child.kill()
        child.wait(5)
        killed = time.perf_counter()

        async def gone():
            return (await read_record(etcd, layout, "r-child"))[0] is None

        await eventually(gone, timeout=6.0, interval=0.1)
        print(f"\nrecord of a killed process gone after {time.perf_counter() - killed:.1f} s (TTL 2 s)")
    finally:
        child.kill()
        child.wait(5)


async def test_a_lost_lease_is_replaced_and_the_record_rewritten(etcd, layout, register):
    reg, _ = await register()
    first_lease = reg.lease_id
    await etcd.lease_revoke(first_lease)  # what a long partition does: the lease expires

    async def back():
        record, kv = await read_record(etcd, layout)
        return kv if kv is not None else None

    kv = await eventually(back, timeout=3.0)
    assert kv.lease == reg.lease_id != first_lease and reg.leases_granted == 2


async def test_etcd_down_longer_than_the_ttl_the_record_comes_back(etcd_private, layout, register):
    reg, source = await register(endpoint=etcd_private.endpoint)
    async with Etcd(etcd_private.endpoint, timeout=1.0) as reader:
        before, _ = await read_record(reader, layout)
        etcd_private.kill()
        source.applied["dep_a"] = 9
        reg.notify_applied()
        await asyncio.sleep(FAST.lease_ttl_s + 1.0)
        etcd_private.start()

        async def fresh():
            record, kv = await read_record(reader, layout)
            return (record, kv) if record and record["applied"] == {"dep_a": 9} else None

        record, kv = await eventually(fresh, timeout=5.0)
    assert record["updated_at"] > before["updated_at"] and kv.lease == reg.lease_id


async def test_registration_waits_for_an_unreachable_etcd(etcd_private, layout, register):
    etcd_private.stop()
    reg, _ = await register(endpoint=etcd_private.endpoint)
    assert reg.writes == 0
    etcd_private.start()
    async with Etcd(etcd_private.endpoint, timeout=1.0) as reader:
        async def registered():
            record, kv = await read_record(reader, layout)
            return (record, kv) if record else None

        record, kv = await eventually(registered, timeout=5.0)
    assert kv.lease == reg.lease_id and record["router_id"] == "r-1"


async def test_an_oversized_record_goes_out_without_counters(etcd, layout, register):
    class Huge(Source):
        def stats(self):
            return {f"dep_{i}": {"champion": {"requests": i, "pad": "x" * 100}} for i in range(200)}

    reg, source = await register(settings=RegistrationSettings(lease_ttl_s=2, max_record_bytes=10_000), source=Huge())
    record, _ = await read_record(etcd, layout)
    assert record["stats"] == {} and record["applied"] == source.applied


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        Registration(None, None, "r-1", "proxy", "", "", dict, dict)
    with pytest.raises(ValueError, match="router_id"):
        Registration(None, None, "a/b", "router", "", "", dict, dict)


async def test_an_idle_routers_record_is_not_rewritten_until_something_changes(etcd, layout, register):
    from dataclasses import replace
    settings = replace(FAST, idle_rewrite_s=60.0)
    reg, source = await register(settings=settings)
    _, kv = await read_record(etcd, layout)
    await asyncio.sleep(settings.write_interval_s * 4)
    _, idle = await read_record(etcd, layout)
    assert idle.mod_revision == kv.mod_revision and reg.skipped >= 2
    source.requests = 5

    async def rewritten():
        record, _ = await read_record(etcd, layout)
        return record["stats"]["dep_a"]["champion"]["requests"] == 5
    await eventually(rewritten, timeout=settings.write_interval_s * 3 + 1)
