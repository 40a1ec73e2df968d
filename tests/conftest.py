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
