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
