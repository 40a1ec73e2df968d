"""Shared fixtures: a real etcd on free loopback ports, and a fresh key prefix per test."""

from __future__ import annotations

import uuid

import pytest

from tsplit.etcd import Etcd
from tsplit.etcd_server import EtcdMember
from tsplit.layout import Layout


@pytest.fixture(scope="session")
def etcd_member(tmp_path_factory):
    """One etcd for the whole session. Tests that stop etcd start their own (etcd_private)."""
    member = EtcdMember(data_dir=tmp_path_factory.mktemp("etcd") / "data").start()
    yield member
    member.stop()


@pytest.fixture
def etcd_private(tmp_path):
    """An etcd of this test's own, for tests that stop, kill or compact it."""
    member = EtcdMember(data_dir=tmp_path / "etcd").start()
    yield member
    member.stop()


@pytest.fixture
def etcd_endpoint(etcd_member) -> str:
    return etcd_member.endpoint


@pytest.fixture
def layout() -> Layout:
    """A prefix no other test uses, so tests never see each other's keys."""
    return Layout(prefix=f"/t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def etcd(etcd_endpoint):
    client = Etcd(etcd_endpoint)
    yield client
    await client.close()


class DevAuth:
    """A key pair and a token mint for tests (issuer and audience are the dev ones)."""

    def __init__(self, directory):
        from tsplit import devkeys
        self.private_path, self.public_path = devkeys.write_key_pair(directory)
        self.private_pem = self.private_path.read_bytes()
        self.issuer, self.audience = devkeys.DEV_ISSUER, devkeys.DEV_AUDIENCE

    def token(self, sub: str = "user-1", org_id: str = "org_1", role: str | None = "admin", **kw) -> str:
        from tsplit import devkeys
        return devkeys.mint_token(self.private_pem, sub=sub, org_id=org_id, role=role, **kw)

    def headers(self, **kw) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(**kw)}"}


@pytest.fixture(scope="session")
def dev_auth(tmp_path_factory) -> DevAuth:
    return DevAuth(tmp_path_factory.mktemp("keys"))


class ControlPlaneUnderTest:
    """An in-process control plane on 127.0.0.1:<free port>; `.stub()` opens a ControlPlane
    stub (its channel is closed at teardown), `.metadata(...)` a bearer token as gRPC metadata."""

    def __init__(self, server, layout: Layout, dev_auth: DevAuth):
        self.server, self.layout, self.dev_auth = server, layout, dev_auth
        self.address = server.address
        self._channels = []

    def stub(self):
        import grpc
        from tsplit.v1 import controlplane_pb2_grpc
        channel = grpc.aio.insecure_channel(self.address)
        self._channels.append(channel)
        return controlplane_pb2_grpc.ControlPlaneStub(channel)

    def metadata(self, **token_claims) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.dev_auth.token(**token_claims)}"),)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.server.stop(0)


@pytest.fixture
async def controlplane_factory(dev_auth):
    """start(etcd_endpoint, layout, **store_settings) -> ControlPlaneUnderTest; all stopped at teardown."""
    from controlplane.auth import AuthSettings
    from controlplane.server import start_controlplane
    from controlplane.settings import ControlPlaneSettings
    from controlplane.store import StoreSettings
    started: list[ControlPlaneUnderTest] = []

    async def start(etcd_endpoint: str, layout: Layout, **store_settings) -> ControlPlaneUnderTest:
        settings = ControlPlaneSettings(
            auth=AuthSettings(public_key_path=str(dev_auth.public_path), issuer=dev_auth.issuer, audience=dev_auth.audience),
            listen="127.0.0.1:0", etcd_endpoints=(etcd_endpoint,), etcd_prefix=layout.prefix, grace_s=0.5,
            store=StoreSettings(**store_settings))
        under_test = ControlPlaneUnderTest(await start_controlplane(settings), layout, dev_auth)
        started.append(under_test)
        return under_test

    yield start
    for under_test in started:
        await under_test.close()


@pytest.fixture
async def controlplane(controlplane_factory, etcd_endpoint, layout) -> ControlPlaneUnderTest:
    """The control plane over the session etcd, under this test's key prefix, trusting dev_auth."""
    return await controlplane_factory(etcd_endpoint, layout)
