"""End to end: a change through the control plane reaches three routers, each reports the
new cache_version in its etcd record, and the control plane's status shows it and the
traffic the routers counted."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from google.protobuf.struct_pb2 import Struct

from tsplit.v1 import controlplane_pb2 as pb

SLUG = "dep_prop"


def struct(body: dict) -> Struct:
    message = Struct()
    message.update(body)
    return message


class RecordWatch:
    """When each router's etcd record first reported each cache_version of SLUG."""

    def __init__(self, etcd, layout):
        self._etcd, self._layout = etcd, layout
        self.first_seen: dict[tuple[str, int], float] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        revision = await self._etcd.revision()
        self._task = asyncio.create_task(self._follow(revision + 1))

    async def _follow(self, revision: int) -> None:
        async for batch in self._etcd.watch_prefix(self._layout.routers, revision):
            now = time.perf_counter()
            for event in batch.events:
                if event.kind == "put":
                    record = json.loads(event.value)
                    version = record["applied"].get(SLUG, 0)
                    self.first_seen.setdefault((record["router_id"], version), now)
            self._changed.set()

    async def wait_all(self, router_ids, version: int, timeout: float = 5.0) -> float:
        """The time when the last of router_ids reported version."""
        keys = [(router_id, version) for router_id in router_ids]
        async with asyncio.timeout(timeout):
            while not all(key in self.first_seen for key in keys):
                self._changed.clear()
                await self._changed.wait()
        return max(self.first_seen[key] for key in keys)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_patch_reaches_three_routers_and_the_status_shows_it(
        controlplane, router_factory, backends, client_factory, etcd, layout, dp):
    stub, md = controlplane.stub(), controlplane.metadata()
    champion_address = await backends.start("lin-a", weights=dp.WEIGHTS_A)
    challenger_address = await backends.start("lin-b", weights=dp.WEIGHTS_B)
    champion = await stub.RegisterModel(pb.RegisterModelRequest(
        body=struct({"endpoint": champion_address, "model_name": "lin-a"})), metadata=md)
    challenger = await stub.RegisterModel(pb.RegisterModelRequest(
        body=struct({"endpoint": challenger_address, "model_name": "lin-b"})), metadata=md)
    await stub.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": champion.model_id, "deployment_id": SLUG})), metadata=md)

    # The watch starts before the routers, so it sees each router's first record.
    watch = RecordWatch(etcd, layout)
    await watch.start()
    routers = [await router_factory() for _ in range(3)]
    router_ids = [r.router_id for r in routers]
    try:
        await watch.wait_all(router_ids, 1)
        answer = await stub.ManageTraffic(pb.ManageTrafficRequest(
            deployment_id=SLUG, body=struct({"action": "add_challenger", "model_id": challenger.model_id,
                                             "traffic_pct": 10})), metadata=md)
        answered = time.perf_counter()
        assert answer.cache_version == 2 and answer.changed
        delays = [(await watch.wait_all(router_ids, 2) - answered) * 1000]
        challenger_id = answer.challenger.id

        for pct, version in zip((20, 30, 40, 25, 15), range(3, 8)):
            answer = await stub.ManageTraffic(pb.ManageTrafficRequest(
                deployment_id=SLUG, body=struct({"action": "update_traffic", "challenger_id": challenger_id,
                                                 "traffic_pct": pct})), metadata=md)
            answered = time.perf_counter()
            assert answer.cache_version == version
            delays.append((await watch.wait_all(router_ids, version) - answered) * 1000)
    finally:
        await watch.stop()
    print(f"\nPATCH answered -> all 3 router records report it: median {statistics.median(delays):.1f} ms, "
          f"max {max(delays):.1f} ms over {len(delays)} changes; each: {[round(d, 1) for d in delays]}")
    assert max(delays) < 1000

    status = await stub.GetDeploymentStatus(pb.GetDeploymentStatusRequest(deployment_id=SLUG), metadata=md)
    assert status.cache_version == 7
    assert sorted((r.router_id, r.applied_cache_version) for r in status.routers) == sorted(
        (router_id, 7) for router_id in router_ids)
    assert [(v.variant, v.model_id, v.traffic_pct) for v in status.variants] == [
        ("champion", champion.model_id, 85), (challenger_id, challenger.model_id, 15)]

    # Each router routes by the new config, and its counters reach the status within ~1 s.
    for router in routers:
        client = client_factory(router.address)
        _, metadata = await client.infer(dp.infer_request(SLUG), metadata=(("x-tsplit-variant", challenger_id),))
        assert metadata["tsplit-variant"] == challenger_id and metadata["tsplit-cache-version"] == "7"
        assert metadata["tsplit-model-id"] == challenger.model_id

    async def counted():
        status = await stub.GetDeploymentStatus(pb.GetDeploymentStatusRequest(deployment_id=SLUG), metadata=md)
        return next(v for v in status.variants if v.variant == challenger_id).forced == len(routers)

    async with asyncio.timeout(3):
        while not await counted():
            await asyncio.sleep(0.1)
