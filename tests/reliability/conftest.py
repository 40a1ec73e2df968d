"""Reliability fixtures: a real 3-member etcd cluster, the whole system in-process over any
etcd endpoints (control planes, gateways, routers, demo models, each given every endpoint),
load generators that record every answer, a link between a router and etcd that can be cut,
and an event loop in a thread for the synchronous fuzzers (hypothesis, schemathesis).

Tests reach the helpers through the `rel` fixture: under --import-mode=importlib a conftest
is not importable. Every load loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import os
import json
import re
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import grpc
import httpx
import pytest
from aetcd.rpc import rpc_pb2 as etcd_pb
from aetcd.rpc import rpc_pb2_grpc as etcd_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.auth import AuthSettings
from controlplane.gateway.client import CallTimeouts
from controlplane.gateway.server import GatewaySettings, RunningGateway, start_gateway
from controlplane.server import ControlPlaneServer, start_controlplane
from controlplane.settings import ControlPlaneSettings
from dataplane.demo_server import DemoModel, RunningDemoServer, start_demo_server
from dataplane.server import RouterSettings, RunningRouter, start_router
from tsplit.testing import CuttableLink
from tsplit.etcd_server import EtcdMember, cluster, find_etcd_binary, wait_for_etcd_health
from tsplit.inference import grpc_predict_v2_pb2 as infer_pb
from tsplit.inference import grpc_predict_v2_pb2_grpc as infer_grpc
from tsplit.layout import Layout

# etcd 3.5.0-3.5.2 can lose acknowledged writes when a member is killed under load.
UNSAFE_ETCD = re.compile(r"^3\.5\.[0-2]$")
# Words that must never reach a user: tracebacks, source paths, grpc and etcd internals.
INTERNAL_DETAIL = re.compile(
    r"Traceback|File \"|\.py\b|/work/|/usr/|site-packages|grpc_status|StatusCode\.|_InactiveRpcError|AioRpcError"
    r"|debug_error_string|etcdserver|ipv4:|Exception\b|Error\(")


# --- etcd cluster --------------------------------------------------------------------------

def etcd_version() -> str:
    out = subprocess.run([find_etcd_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"etcd Version: (\S+)", out)
    return match.group(1) if match else "unknown"


class EtcdCluster:
    """Three members on loopback; `endpoints` lists them all, in the order given to processes."""

    def __init__(self, members: list[EtcdMember]):
        self.members = members

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    async def leader(self, timeout: float = 15.0) -> EtcdMember:
        """The current leader, by the Maintenance Status RPC of each running member."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in [m for m in self.members if m.running]:
                async with grpc.aio.insecure_channel(member.endpoint) as channel:
                    try:
                        status = await etcd_grpc.MaintenanceStub(channel).Status(etcd_pb.StatusRequest(), timeout=1)
                    except grpc.aio.AioRpcError:
                        continue
                if status.leader and status.leader == status.header.member_id:
                    return member
            await asyncio.sleep(0.1)
        raise AssertionError(f"no etcd leader within {timeout} s")

    def leader_first(self, leader: EtcdMember) -> None:
        """Put the leader first: grpc's pick_first connects every client to it, so killing it
        cuts their connections (the harder case) rather than only their member's leader."""
        self.members.sort(key=lambda m: m is not leader)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


@pytest.fixture
def etcd_cluster(tmp_path):
    version = etcd_version()
    if UNSAFE_ETCD.match(version):
        pytest.skip(f"etcd {version} can lose data when a member is killed under load (3.5.0-3.5.2); "
                    "install Debian's etcd-server 3.4 or etcd >= 3.5.3, or set TSPLIT_ETCD_BIN")
    members = cluster(tmp_path / "cluster", 3)
    for member in members:
        member.start(wait=False)
    etcd = EtcdCluster(members)
    try:
        for member in members:
            if not wait_for_etcd_health(member.endpoint, 30):
                raise RuntimeError(f"etcd member {member.name} not healthy within 30 s")
        yield etcd
    finally:
        etcd.stop()


# --- the system, in-process ------------------------------------------------------------------

def auth_settings(dev_auth) -> AuthSettings:
    return AuthSettings(public_key_path=str(dev_auth.public_path), issuer=dev_auth.issuer, audience=dev_auth.audience)


class System:
    """Control planes, gateways, routers and demo model servers in this event loop, all over
    the same etcd endpoints and key prefix; close() stops what is still running."""

    def __init__(self, etcd_endpoints: Sequence[str], layout: Layout, dev_auth, auth: AuthSettings | None = None):
        self.etcd_endpoints, self.layout, self.dev_auth = list(etcd_endpoints), layout, dev_auth
        self.auth = auth or auth_settings(dev_auth)  # how the control planes and gateways verify tokens
        self._stops: dict[int, Callable[[float], Awaitable[None]]] = {}

    def _track(self, thing, stop: Callable[[float], Awaitable[None]]):
        self._stops[id(thing)] = stop
        return thing

    async def stop(self, thing, grace_s: float = 0.5) -> None:
        """Stop one part; in-flight calls get grace_s seconds (0: cut at once)."""
        stop = self._stops.pop(id(thing), None)
        if stop is not None:
            await stop(grace_s)

    async def controlplane(self, listen: str = "127.0.0.1:0") -> ControlPlaneServer:
        settings = ControlPlaneSettings(
            auth=self.auth, listen=listen, etcd_endpoints=tuple(self.etcd_endpoints),
            etcd_prefix=self.layout.prefix, grace_s=0.5)
        server = await start_controlplane(settings)
        return self._track(server, server.stop)

    async def gateway(self, controlplane_address: str, **settings) -> RunningGateway:
        settings.setdefault("timeouts", CallTimeouts(connect_s=4.0, mutation_s=20.0))
        running = await start_gateway(GatewaySettings(
            controlplane=controlplane_address, auth=self.auth, listen="127.0.0.1:0", **settings))
        return self._track(running, lambda grace_s: running.stop())

    async def router(self, listen: str = "127.0.0.1:0", etcd: str | None = None, wait_ready: bool = True,
                     **overrides) -> RunningRouter:
        settings = RouterSettings(listen=listen, etcd=etcd or ",".join(self.etcd_endpoints),
                                  etcd_prefix=self.layout.prefix, shutdown_grace_s=0.5, **overrides)
        router = await start_router(settings)
        self._track(router, router.stop)
        if wait_ready:
            await asyncio.wait_for(router.sync.ready.wait(), 20)
        return router

    async def models(self, names: Sequence[str]) -> list[RunningDemoServer]:
        """One demo server per name, each serving one linear model of that name."""
        servers = []
        for i, name in enumerate(names):
            weights = ((1.0, 0.0), (0.0, 1.0)) if i % 2 == 0 else ((0.0, 1.0), (1.0, 0.0))
            server = await start_demo_server([DemoModel(name, weights=weights, bias=(0.0, 0.0))])
            servers.append(self._track(server, server.stop))
        return servers

    async def close(self) -> None:
        stops, self._stops = list(self._stops.values()), {}
        for stop in reversed(stops):
            try:
                await asyncio.wait_for(stop(0.2), 15)
            except Exception:  # teardown goes on; the test's own assertions already ran
                pass


class Rest:
    """An httpx client of one gateway with tokens of one org."""

    def __init__(self, url: str, dev_auth, org_id: str = "org_1", sub: str = "rel-user"):
        self.url, self.dev_auth, self.org_id, self.sub = url, dev_auth, org_id, sub
        self.http = httpx.AsyncClient(base_url=url, timeout=30)

    def headers(self, **claims) -> dict[str, str]:
        claims = {"org_id": self.org_id, "sub": self.sub, **claims}
        return self.dev_auth.headers(**claims)

    async def register(self, name: str, endpoint: str) -> dict:
        r = await self.http.post("/v1/models", json={"endpoint": endpoint, "model_name": name}, headers=self.headers())
        assert r.status_code == 201, r.text
        return r.json()

    async def create(self, champion: str, slug: str | None = None) -> dict:
        body = {"champion_model_id": champion, **({"deployment_id": slug} if slug else {})}
        r = await self.http.post("/v1/deployments", json=body, headers=self.headers())
        assert r.status_code == 201, r.text
        return r.json()

    async def patch(self, slug: str, body: dict, key: str | None = None, **headers) -> httpx.Response:
        extra = {"Idempotency-Key": key} if key else {}
        return await self.http.patch(f"/v1/deployments/{slug}/traffic", json=body,
                                     headers={**self.headers(), **extra, **headers})

    async def get(self, path: str) -> Any:
        r = await self.http.get(path, headers=self.headers())
        assert r.status_code == 200, r.text
        return r.json()

    async def history(self, slug: str) -> list[dict]:
        return (await self.get(f"/v1/deployments/{slug}/history"))["versions"]

    async def close(self) -> None:
        await self.http.aclose()


@dataclass(frozen=True)
class Seeded:
    slug: str
    champion: str                # model id
    challengers: list[str]       # challenger ids, each at 1 %
    version: int                 # cache_version after seeding


async def seed_deployment(rest: Rest, model_endpoint: str, challengers: int, slug: str | None = None) -> Seeded:
    """A deployment whose champion and `challengers` challengers (1 % each) are demo model
    `lin` at model_endpoint (under different model ids)."""
    champion = (await rest.register("lin", model_endpoint))["model_id"]
    created = await rest.create(champion, slug)
    ids = []
    for _ in range(challengers):
        model_id = (await rest.register("lin", model_endpoint))["model_id"]
        r = await rest.patch(created["deployment_id"], {"action": "add_challenger", "model_id": model_id, "traffic_pct": 1})
        assert r.status_code == 200, r.text
        ids.append(r.json()["challenger"]["id"])
    return Seeded(created["deployment_id"], champion, ids, 1 + challengers)


# --- load that records every answer -----------------------------------------------------------

@dataclass
class PatchAnswer:
    key: str
    writer: int
    pct: float
    status: int            # 0: no HTTP answer (connection failed)
    error: str | None
    message: str
    cache_version: int | None
    sent: float            # loop time
    took: float
    via: str               # the gateway's URL


def writer_pct(index: int) -> float:
    """A writer's index-th share: 1.01, 1.02, ... 9.99, so no accepted write is a no-op."""
    if not 0 <= index < 899:
        raise ValueError("a writer has 899 distinct shares")
    return round(1 + (index + 1) / 100, 2)


class PatchLoad:
    """Sequential PATCH writers, writer k moving challenger k through never-repeating shares.

    A 503 (or a lost connection) is retried with the same Idempotency-Key, each try on the
    next gateway, as a client behind a load balancer would; keys still unresolved at the
    end are resolved by resolve(). Bounded: max_per_writer requests per writer, and time.
    """

    def __init__(self, rests: Sequence[Rest], slug: str, challenger_ids: Sequence[str],
                 max_per_writer: int = 400, pause_s: float = 0.02, retry_pause_s: float = 0.15):
        self.rests, self.slug, self.challenger_ids = list(rests), slug, list(challenger_ids)
        self.max_per_writer, self.pause_s, self.retry_pause_s = max_per_writer, pause_s, retry_pause_s
        self.answers: list[PatchAnswer] = []
        self.unresolved: dict[str, tuple[int, float]] = {}   # key -> (writer, pct)
        self.inflight: Counter = Counter()                   # gateway URL -> requests in flight
        self.run_id = uuid.uuid4().hex[:8]

    async def _send(self, rest: Rest, writer: int, key: str, pct: float) -> PatchAnswer:
        body = {"action": "update_traffic", "challenger_id": self.challenger_ids[writer], "traffic_pct": pct}
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self.inflight[rest.url] += 1
        try:
            r = await rest.patch(self.slug, body, key)
        except httpx.HTTPError as err:
            answer = PatchAnswer(key, writer, pct, 0, None, type(err).__name__, None, sent, loop.time() - sent,
                                 rest.url)
        else:
            data = r.json()
            answer = PatchAnswer(key, writer, pct, r.status_code, data.get("error"), data.get("message", ""),
                                 data.get("cache_version") if r.status_code == 200 else None, sent, loop.time() - sent,
                                 rest.url)
        finally:
            self.inflight[rest.url] -= 1
        self.answers.append(answer)
        return answer

    async def _writer(self, writer: int, stop: asyncio.Event, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        attempt = writer
        for index in range(self.max_per_writer):
            if stop.is_set() or loop.time() > deadline:
                return
            key, pct = f"w{writer}-{self.run_id}-{index}", writer_pct(index)
            while True:
                answer = await self._send(self.rests[attempt % len(self.rests)], writer, key, pct)
                attempt += 1
                if answer.status not in (0, 503):
                    break
                if stop.is_set() or loop.time() > deadline:
                    self.unresolved[key] = (writer, pct)
                    return
                await asyncio.sleep(self.retry_pause_s)
            await asyncio.sleep(self.pause_s)

    async def run(self, stop: asyncio.Event, max_seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + max_seconds
        await asyncio.gather(*(self._writer(w, stop, deadline) for w in range(len(self.challenger_ids))))

    async def resolve(self, timeout: float = 30.0) -> None:
        """Retry every unresolved key (same key, same body) until it answers 200 or 4xx."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for key, (writer, pct) in list(self.unresolved.items()):
            for attempt in range(200):
                answer = await self._send(self.rests[attempt % len(self.rests)], writer, key, pct)
                if answer.status not in (0, 503):
                    del self.unresolved[key]
                    break
                if loop.time() > deadline:
                    raise AssertionError(f"key {key} still unresolved after {timeout} s: {answer}")
                await asyncio.sleep(0.2)

    def final(self) -> dict[str, PatchAnswer]:
        """The last answer per key: what the client finally learned."""
        return {a.key: a for a in self.answers}

    def statuses(self) -> Counter:
        return Counter((a.status, a.error) for a in self.answers)


def check_ledger(load: PatchLoad, history: list[dict], versions_before: int) -> dict[str, int]:
    """Nothing lost, nothing applied twice: every key answered 200 exactly one version, that
    version's history entry carries the key, every version after the seed came from one of
    our keys, and the versions are contiguous. Returns {key: version}."""
    final = load.final()
    assert not load.unresolved, f"unresolved keys: {load.unresolved}"
    bad = [a for a in final.values() if a.status != 200]
    assert not bad, f"keys without a final 200: {bad[:5]}"
    by_key = {k: a.cache_version for k, a in final.items()}
    versions = sorted(by_key.values())
    assert len(set(versions)) == len(versions), "a version was answered to two different requests"
    # Retries of one key always learn the same version.
    for answer in load.answers:
        if answer.status == 200:
            assert answer.cache_version == by_key[answer.key], f"key {answer.key} answered two versions"
    assert [e["cache_version"] for e in history] == list(range(1, len(history) + 1)), "versions not contiguous"
    produced = {e["cache_version"]: e.get("request_id") for e in history[versions_before:]}
    assert produced == {v: k for k, v in by_key.items()}, (
        "history and answers disagree: a version no request of ours produced, one missing, or a key twice")
    pct_of = {a.key: a.pct for a in final.values()}
    for entry in history[versions_before:]:
        assert entry["request"]["traffic_pct"] == pct_of[entry["request_id"]]
    return by_key


@dataclass
class InferRecord:
    address: str
    sent: float
    code: str                 # "OK" or a grpc status name
    cache_version: int | None


def infer_request(slug: str) -> infer_pb.ModelInferRequest:
    request = infer_pb.ModelInferRequest(model_name=slug, id="rel")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(struct.pack("<2f", 0.3, 0.7))
    return request


class InferenceClient:
    """One channel per router address; infer() answers (code name, cache_version, variant)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500)])
        return self._channels[address]

    async def infer(self, address: str, slug: str, timeout: float = 3.0,
                    metadata: Sequence[tuple[str, str]] = ()) -> tuple[str, int | None, str | None]:
        stub = infer_grpc.GRPCInferenceServiceStub(self.channel(address))
        call = stub.ModelInfer(infer_request(slug), timeout=timeout, metadata=tuple(metadata))
        try:
            await call
        except grpc.aio.AioRpcError as err:
            return err.code().name, None, None
        md = dict(await call.initial_metadata())
        return "OK", int(md["tsplit-cache-version"]), md.get("tsplit-variant")

    async def health(self, address: str, wait_for_ready: bool = False) -> str:
        """The router's grpc health ("SERVING", "NOT_SERVING"), or the failed call's code."""
        stub = health_pb2_grpc.HealthStub(self.channel(address))
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2,
                                    wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def wait_for_version(self, address: str, slug: str, version: int, timeout: float = 15.0) -> float:
        """Seconds until an answer of this router carries `version`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            code, seen, _ = await self.infer(address, slug)
            if code == "OK" and seen == version:
                return loop.time() - start
            if loop.time() - start > timeout:
                raise AssertionError(f"router {address} at {code}/{seen}, not version {version}, after {timeout} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


class InferenceLoad:
    """`per_address` sequential callers per router, each bounded in count and time."""

    def __init__(self, client: InferenceClient, addresses: Sequence[str], slug: str, per_address: int = 2,
                 pause_s: float = 0.01, max_per_caller: int = 20_000):
        self.client, self.addresses, self.slug = client, list(addresses), slug
        self.per_address, self.pause_s, self.max_per_caller = per_address, pause_s, max_per_caller
        self.records: list[InferRecord] = []

    async def _caller(self, address: str, stop: asyncio.Event, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.max_per_caller):
            if stop.is_set() or loop.time() > deadline:
                return
            sent = loop.time()
            code, version, _ = await self.client.infer(address, self.slug)
            self.records.append(InferRecord(address, sent, code, version))
            await asyncio.sleep(self.pause_s)

    async def run(self, stop: asyncio.Event, max_seconds: float) -> None:
        deadline = asyncio.get_running_loop().time() + max_seconds
        await asyncio.gather(*(self._caller(a, stop, deadline) for a in self.addresses for _ in range(self.per_address)))

    def of(self, address: str, since: float = float("-inf"), until: float = float("inf")) -> list[InferRecord]:
        return [r for r in self.records if r.address == address and since <= r.sent <= until]


# --- an event loop in a thread ------------------------------------------------------------------

class LoopThread:
    """An asyncio loop in a daemon thread, for servers that synchronous tests call into."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="reliability-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# --- helpers reached through `rel` ---------------------------------------------------------------

def assert_no_internal_detail(text: str) -> None:
    match = INTERNAL_DETAIL.search(text)
    assert match is None, f"internal detail {match.group(0)!r} shown to a user: {text[:300]}"


class Helpers:
    System, Rest, PatchLoad, InferenceLoad, InferenceClient = System, Rest, PatchLoad, InferenceLoad, InferenceClient
    CuttableLink, LoopThread, EtcdCluster = CuttableLink, LoopThread, EtcdCluster
    seed_deployment = staticmethod(seed_deployment)
    check_ledger = staticmethod(check_ledger)
    infer_request = staticmethod(infer_request)
    writer_pct = staticmethod(writer_pct)
    assert_no_internal_detail = staticmethod(assert_no_internal_detail)
    auth_settings = staticmethod(auth_settings)


@dataclass(frozen=True)
class UpStack:
    directory: Path
    stack: dict

    @property
    def logs(self) -> Path:
        return Path(self.stack["logs"])


@pytest.fixture(scope="session")
def up_stack(tmp_path_factory):
    """`tsplit up --demo-models --routers 2`: every part a real process with its log in
    D/logs; shared by the tests that need separate processes (logs, the soak smoke run)."""
    directory = tmp_path_factory.mktemp("up-stack")
    tsplit = str(Path(sys.executable).parent / "tsplit")
    result = subprocess.run([tsplit, "up", "--dir", str(directory), "--routers", "2", "--demo-models", "--detach"],
                            capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    try:
        assert result.returncode == 0, f"tsplit up failed: {result.stderr[-2000:]}"
        yield UpStack(directory, json.loads((directory / "stack.json").read_text()))
    finally:
        subprocess.run([tsplit, "down", "--dir", str(directory)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def rel() -> Helpers:
    return Helpers()


@pytest.fixture
async def inference():
    client = InferenceClient()
    yield client
    await client.close()


@pytest.fixture
async def system_factory(layout, dev_auth):
    """system(etcd endpoints) -> System under this test's key prefix; closed at teardown."""
    made: list[System] = []
    rests: list[Rest] = []

    def make(endpoints: Sequence[str], auth: AuthSettings | None = None) -> System:
        system = System(endpoints, layout, dev_auth, auth)
        made.append(system)
        return system

    def rest(url: str, **kw) -> Rest:
        client = Rest(url, dev_auth, **kw)
        rests.append(client)
        return client

    make.rest = rest
    yield make
    for client in rests:
        await client.close()
    for system in made:
        await system.close()
