"""Data-plane fixtures: demo model servers, deployments written straight into etcd, and
routers started in-process against the session etcd under the test's own prefix."""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass
from typing import Sequence

import grpc
import pytest

from dataplane.demo_server import DemoModel, start_demo_server
from dataplane.server import RouterSettings, RunningRouter, start_router
from tsplit.etcd import Etcd
from tsplit.inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
from tsplit.layout import Layout
from tsplit.resources import Challenger, Deployment, Model, dumps, pct_to_bp

WEIGHTS_A = ((1.0, 0.0), (0.0, 1.0))
WEIGHTS_B = ((0.0, 1.0), (1.0, 0.0))   # the opposite labels of A


def binomial_bound(n: int, p: float, z: float = 3.29) -> float:
    """Half-width of the two-sided 99.9 % normal interval of a Binomial(n, p) count."""
    return z * math.sqrt(n * p * (1 - p))


def infer_request(slug: str, rows: Sequence[Sequence[float]] = ((0.3, 0.7),), raw: bool = True,
                  version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=slug, model_version=version, id="req-1")
    request.inputs.add(name="input", datatype="FP32", shape=[len(rows), len(rows[0])])
    flat = [v for row in rows for v in row]
    if raw:
        request.raw_input_contents.append(struct.pack(f"<{len(flat)}f", *flat))
    else:
        request.inputs[0].contents.fp32_contents.extend(flat)
    return request


@dataclass
class DemoBackends:
    """Start demo model servers; register their models in etcd; all stopped at teardown."""

    etcd: Etcd
    layout: Layout

    def __post_init__(self) -> None:
        self._servers = []

    async def start(self, name: str, weights=WEIGHTS_A, latency_ms: float = 0.0, error_rate: float = 0.0,
                    error_code: grpc.StatusCode = grpc.StatusCode.INTERNAL, options=()) -> str:
        model = DemoModel(name, weights=weights, bias=(0.0,) * len(weights[0]), latency_ms=latency_ms,
                          error_rate=error_rate, error_code=error_code)
        server = await start_demo_server([model], options=options)
        self._servers.append(server)
        return server.address

    async def model(self, model_id: str, endpoint: str, model_name: str, model_version: str = "") -> Model:
        model = Model(model_id, endpoint, model_name, model_version, org_id="org_1")
        await self.etcd.put(self.layout.model(model_id), dumps(model.to_json()))
        return model

    async def demo_model(self, model_id: str, **demo) -> Model:
        """A demo server serving one model named after model_id, registered as model_id."""
        name = f"lin-{model_id}"
        return await self.model(model_id, await self.start(name, **demo), name)

    async def deployment(self, slug: str, champion: str, challengers: Sequence[tuple[str, str, float]] = (),
                         shadow_mode: bool = False, cache_version: int = 1) -> Deployment:
        """challengers: (challenger id, model id, traffic pct)."""
        deployment = Deployment(
            slug, "org_1", champion,
            tuple(Challenger(cid, model_id, pct_to_bp(pct)) for cid, model_id, pct in challengers),
            shadow_mode=shadow_mode, cache_version=cache_version)
        await self.etcd.put(self.layout.deployment(slug), dumps(deployment.to_json()))
        return deployment

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(0) for s in self._servers), return_exceptions=True)


@pytest.fixture
async def backends(etcd, layout):
    made = DemoBackends(etcd, layout)
    yield made
    await made.close()


@pytest.fixture
async def router_factory(etcd_endpoint, layout):
    """start(**settings) -> RunningRouter on 127.0.0.1:0 over the session etcd and the
    test's prefix; waits for its first snapshot; all stopped at teardown."""
    started: list[RunningRouter] = []

    async def start(wait_ready: bool = True, **overrides) -> RunningRouter:
        settings = RouterSettings(**{
            "listen": "127.0.0.1:0", "etcd": etcd_endpoint, "etcd_prefix": layout.prefix,
            "shutdown_grace_s": 0.5, **overrides})
        router = await start_router(settings)
        started.append(router)
        if wait_ready:
            await asyncio.wait_for(router.sync.ready.wait(), 10)
        return router

    yield start
    await asyncio.gather(*(r.stop(0.2) for r in started), return_exceptions=True)


@pytest.fixture
async def router(router_factory) -> RunningRouter:
    return await router_factory()


class RouterClient:
    """The generated OIP v2 stub on a channel to a router, plus raw calls."""

    def __init__(self, address: str):
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.raw_infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    async def infer(self, request: pb.ModelInferRequest, metadata=(), timeout: float = 5.0):
        """(response, initial metadata as a dict)."""
        call = self.stub.ModelInfer(request, metadata=metadata, timeout=timeout)
        response = await call
        return response, dict(await call.initial_metadata())

    async def variants(self, request: pb.ModelInferRequest, count: int, concurrency: int = 50,
                       metadata=()) -> list[str]:
        """The tsplit-variant of `count` answers, sent `concurrency` at a time."""
        names: list[str] = []
        for start in range(0, count, concurrency):
            answers = await asyncio.gather(*(
                self.infer(request, metadata) for _ in range(min(concurrency, count - start))))
            names += [md["tsplit-variant"] for _, md in answers]
        return names

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def client_factory():
    clients: list[RouterClient] = []

    def make(address: str) -> RouterClient:
        client = RouterClient(address)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll predicate() until true; fail the test after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_for_version(router: RunningRouter, slug: str, version: int, timeout: float = 5.0) -> None:
    await wait_until(lambda: router.sync.applied_versions().get(slug) == version, timeout)


def mirrors_settled(router: RunningRouter, slug: str, variant: str):
    """A predicate: every copy sent to variant has been answered and scored or failed."""
    def check() -> bool:
        row = router.stats.snapshot().get(slug, {}).get(variant, {})
        return router.mirrors.inflight == 0 and row.get("mirrored", 0) == row.get("compared", 0) + row.get(
            "mirror_errors", 0)
    return check


@pytest.fixture
async def proxyless_factory(etcd_endpoint, layout):
    """make(wait=True, etcd=None, in_loop=False, **options) -> a ProxylessClient over the
    session etcd (or `etcd`) and the test's prefix (in_loop: made with start_in_loop() on
    the test's loop), its first snapshot waited for; all closed at teardown."""
    from dataplane.proxyless import ProxylessClient
    made = []

    async def make(wait: bool = True, etcd: str | None = None, in_loop: bool = False, **options):
        if in_loop:
            client = await ProxylessClient.start_in_loop(etcd or etcd_endpoint, layout.prefix, **options)
        else:
            client = ProxylessClient(etcd or etcd_endpoint, layout.prefix, **options)
        made.append(client)
        if wait:
            assert await client.wait_ready_async(10), "no first snapshot within 10 s"
        return client

    yield make
    for client in made:
        await client.aclose()


class ProxylessCaller:
    """The generated OIP v2 stub on a proxyless client's channel: "sync" (each call in a
    worker thread, as a threaded caller makes it) or "aio" (on the test's loop)."""

    def __init__(self, client, transport: str):
        self.transport = transport
        channel = client.channel() if transport == "sync" else client.aio_channel()
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)

    async def call(self, method: str, request, metadata=(), timeout: float = 5.0):
        """(response, initial metadata as a dict); raises grpc.RpcError (code(), details())."""
        multicallable = getattr(self.stub, method)
        if self.transport == "sync":
            response, call = await asyncio.to_thread(multicallable.with_call, request, timeout=timeout,
                                                     metadata=metadata)
            return response, dict(call.initial_metadata())
        call = multicallable(request, metadata=metadata, timeout=timeout)
        response = await call
        return response, dict(await call.initial_metadata())

    async def infer(self, request, metadata=(), timeout: float = 5.0):
        return await self.call("ModelInfer", request, metadata, timeout)

    async def variants(self, request, count: int, concurrency: int = 20, metadata=()) -> list[str]:
        names: list[str] = []
        for start in range(0, count, concurrency):
            answers = await asyncio.gather(*(
                self.infer(request, metadata) for _ in range(min(concurrency, count - start))))
            names += [md["tsplit-variant"] for _, md in answers]
        return names


class Helpers:
    """Helpers the tests reach through the `dp` fixture (conftest is not importable under
    --import-mode=importlib)."""

    ProxylessCaller = ProxylessCaller

    binomial_bound = staticmethod(binomial_bound)
    infer_request = staticmethod(infer_request)
    wait_until = staticmethod(wait_until)
    wait_for_version = staticmethod(wait_for_version)
    mirrors_settled = staticmethod(mirrors_settled)
    WEIGHTS_A, WEIGHTS_B = WEIGHTS_A, WEIGHTS_B


@pytest.fixture
def dp() -> Helpers:
    return Helpers()
