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


async def measure(client: httpx.AsyncClient, routers: list[str], slug: str, challenger_id: str,
                  changes: int, pause_s: float = 0.02, timeout_s: float = 10.0) -> list[float]:
    """Milliseconds from each PATCH's 200 to the last router serving it, `changes` times."""
    channels = [grpc.aio.insecure_channel(a) for a in routers]
    request = infer_request(slug).SerializeToString()
    calls = [c.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)
             for c in channels]
    samples = []
    try:
        for i in range(changes):
            pct = 20 if i % 2 == 0 else 10
            answer = await rest.patch_traffic(
                client, slug, {"action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct})
            ok_at = time.perf_counter()
            seen = await asyncio.gather(*(
                _wait_version(call, request, answer["cache_version"], ok_at + timeout_s) for call in calls))
            samples.append(max(0.0, (max(seen) - ok_at) * 1000))
            await asyncio.sleep(pause_s)
    finally:
        for c in channels:
            await c.close()
    return samples
