"""Target 3: from a PATCH's 200 to every router serving the new split.

After each PATCH answers 200 with cache_version v, the harness probes every router with
ModelInfer requests (one in flight per router) until each answers with tsplit-cache-version
>= v. A router's figure is the time its first such answer arrived; the change's figure is
the slowest router's. Resolution: one probe round trip (about a millisecond here)."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx

from bench import rest
from bench.frames import MODEL_INFER_PATH, infer_request
from tsplit.etcd import Etcd
from tsplit.layout import Layout
from tsplit.resources import Deployment, dumps, loads


def _identity(raw: bytes) -> bytes:
    return raw


def _cache_version(metadata) -> int:
    for key, value in metadata or ():
        if key == "tsplit-cache-version":
            return int(value)
    return 0


async def _wait_version(call, request: bytes, version: int, deadline: float) -> float:
    """perf_counter time of the first answer carrying cache_version >= version."""
    while time.perf_counter() < deadline:
        invocation = call(request, timeout=1.0)
        try:
            await invocation
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.001)
            continue
        seen = _cache_version(await invocation.initial_metadata()) or _cache_version(
            await invocation.trailing_metadata())
        if seen >= version:
            return time.perf_counter()
    raise TimeoutError(f"a router did not serve cache_version {version} in time")


async def setup_deployment(client: httpx.AsyncClient, champion: str, challenger: str) -> tuple[str, str]:
    """A deployment with one 10 % challenger, made through the gateway; (slug, challenger id)."""
    champ = await rest.register_model(client, champion, "linear-a")
    chall = await rest.register_model(client, challenger, "linear-b")
    slug = await rest.create_deployment(client, champ)
    answer = await rest.patch_traffic(client, slug, {"action": "add_challenger", "model_id": chall, "traffic_pct": 10})
    return slug, answer["challenger"]["id"]


class _Probes:
    """One channel per router and a ModelInfer call that reads the cache version."""

    def __init__(self, routers: list[str], slug: str):
        self.channels = [grpc.aio.insecure_channel(a) for a in routers]
        self.request = infer_request(slug).SerializeToString()
        self.calls = [c.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)
                      for c in self.channels]

    async def all_serving(self, version: int, deadline: float) -> float:
        """perf_counter time when the last router first answered with version or newer."""
        seen = await asyncio.gather(*(_wait_version(call, self.request, version, deadline) for call in self.calls))
        return max(seen)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def measure_etcd_put(etcd: Etcd, layout: Layout, routers: list[str], slug: str, challenger_id: str,
                           changes: int, pause_s: float = 0.02, timeout_s: float = 10.0) -> dict[str, list[float]]:
    """The router half alone: the deployment's next version put straight into etcd (what
    the control plane's transaction writes), timed from the put being sent and from its
    acknowledgement to every router serving it."""
    probes = _Probes(routers, slug)
    from_sent, from_ack = [], []
    try:
        for i in range(changes):
            current = Deployment.from_json(loads((await etcd.get(layout.deployment(slug))).value))
            challengers = tuple(
                c if c.id != challenger_id else type(c)(c.id, c.model_id, 2000 if i % 2 == 0 else 1000, c.is_active)
                for c in current.challengers)
            nxt = current.with_challengers(challengers, cache_version=current.cache_version + 1)
            sent = time.perf_counter()
            await etcd.put(layout.deployment(slug), dumps(nxt.to_json()))
            acked = time.perf_counter()
            done = await probes.all_serving(nxt.cache_version, acked + timeout_s)
            from_sent.append((done - sent) * 1000)
            from_ack.append(max(0.0, (done - acked) * 1000))
            await asyncio.sleep(pause_s)
    finally:
        await probes.close()
    return {"from_put_sent_ms": from_sent, "from_put_ack_ms": from_ack}


async def measure(client: httpx.AsyncClient, routers: list[str], slug: str, challenger_id: str,
                  changes: int, pause_s: float = 0.02, timeout_s: float = 10.0) -> list[float]:
    """Milliseconds from each PATCH's 200 to the last router serving it, `changes` times."""
    probes = _Probes(routers, slug)
    samples = []
    try:
        for i in range(changes):
            pct = 20 if i % 2 == 0 else 10
            answer = await rest.patch_traffic(
                client, slug, {"action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct})
            ok_at = time.perf_counter()
            done = await probes.all_serving(answer["cache_version"], ok_at + timeout_s)
            samples.append(max(0.0, (done - ok_at) * 1000))
            await asyncio.sleep(pause_s)
    finally:
        await probes.close()
    return samples
