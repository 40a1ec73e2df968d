"""ConfigSync's swap timestamps (the DEBUG line the propagation bench reads) against a real
etcd: one line per table swapped in, with the etcd revision of the change, read before
swapped, both between the put and the table being seen."""

from __future__ import annotations

import asyncio
import logging
import time

from bench.propagation import parse_swaps
from dataplane.config_sync import ConfigSync
from tsplit.etcd import Etcd
from tsplit.resources import Deployment, Model, dumps


async def test_each_watched_change_logs_its_revision_and_swap_time(etcd_endpoint, etcd, layout, caplog):
    caplog.set_level(logging.DEBUG, logger="dataplane.config_sync")
    await etcd.put(layout.model("mod_a"), dumps(Model("mod_a", "127.0.0.1:9001", "a").to_json()))
    swapped = asyncio.Event()
    async with Etcd(etcd_endpoint, timeout=1.0) as client:
        sync = ConfigSync(client, layout, on_table=lambda table: swapped.set())
        await sync.start()
        try:
            await asyncio.wait_for(sync.ready.wait(), 5)
            puts = []
            for version in (1, 2, 3):
                swapped.clear()
                before = time.perf_counter()
                revision = await etcd.put(layout.deployment("dep_a"),
                                          dumps(Deployment("dep_a", "org_1", "mod_a", (), False, version).to_json()))
                await asyncio.wait_for(swapped.wait(), 5)
                puts.append((revision, before, time.perf_counter()))
            # A change that changes nothing the router uses (the same value again) swaps nothing.
            await etcd.put(layout.deployment("dep_a"),
                           dumps(Deployment("dep_a", "org_1", "mod_a", (), False, 3).to_json()))
            await asyncio.sleep(0.2)
        finally:
            await sync.stop()
    swaps = parse_swaps(caplog.text)
    assert [s.revision for s in swaps] == [revision for revision, _, _ in puts]
    for swap, (_, before, seen) in zip(swaps, puts):
        assert before < swap.read <= swap.swapped <= seen
