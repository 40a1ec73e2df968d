"""The etcd client moves off a member cut off from the quorum (issue 16): a 3-member cluster
whose members reach each other only through relays (tsplit.testing.CuttableLink), one
member partitioned from both peers while clients can still reach it. A client that talks to
that member sees "no leader" (etcd's hasleader check) on its write and on its watch, moves
to another member, and its writes and watch go on within the deadline."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from aetcd.rpc import rpc_pb2 as pb

from tsplit.etcd import Etcd, EtcdUnavailable
from tsplit.etcd_server import cluster, wait_for_etcd_health
from tsplit.testing import CuttableLink

DEADLINE_S = 10.0  # from the member losing its leader to the write committed and the watch event seen


def healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


@pytest.fixture
async def linked_cluster(tmp_path):
    members = cluster(tmp_path / "cluster", 3)
    links = [await CuttableLink(f"127.0.0.1:{m.peer_port}").start() for m in members]
    for member, link in zip(members, links):
        member.advertise_peer_url = f"http://{link.address}"
        member.extra_args = ("--pre-vote",)  # the cut-off member's elections must not unseat the leader
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.initial_cluster = initial
        member.start(wait=False)
    try:
        for member in members:
            assert await asyncio.to_thread(wait_for_etcd_health, member.endpoint, 30), member.name
        yield members, links
    finally:
        for link in links:
            await link.close()
        for member in members:
            member.stop()


async def member_id(endpoint: str) -> str:
    async with Etcd(endpoint) as etcd:
        return format((await etcd._unary("_maintenance", "Status", pb.StatusRequest())).header.member_id, "x")


@pytest.mark.timeout(120)
async def test_writes_and_watches_move_off_a_member_that_lost_its_leader(linked_cluster):
    members, links = linked_cluster
    cut = members[2]
    ids = [await member_id(m.endpoint) for m in members]
    client = Etcd([cut.endpoint, members[0].endpoint, members[1].endpoint], timeout=2.0)
    other = Etcd(members[0].endpoint)
    seen: list[str] = []
    start = await client.put("/failover/first", b"1")
    assert client.member == cut.endpoint

    async def follow() -> None:
        revision = start
        for _ in range(200):  # bounded: each pass is a (re)connected watch
            try:
                async for batch in client.watch_prefix("/failover/", revision + 1):
                    for event in batch.events:
                        seen.append(event.key)
                    revision = batch.seen_revision
            except EtcdUnavailable:
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(follow())
    try:
        await other.put("/failover/before", b"1")
        for _ in range(100):
            if "/failover/before" in seen:
                break
            await asyncio.sleep(0.05)
        assert "/failover/before" in seen

        # Partition: nobody reaches the member, it reaches nobody; clients still reach it.
        links[2].cut()
        for link in links[:2]:
            link.refuse_sender(ids[2])
        lost = time.monotonic()
        while healthy(cut.endpoint):
            assert time.monotonic() - lost < 15, "the cut-off member did not notice it lost its leader"
            await asyncio.sleep(0.1)
        noticed = time.monotonic()

        # A write moves on: the first try may fail (no leader), the next lands on another member.
        written = None
        while written is None and time.monotonic() - noticed < DEADLINE_S:
            try:
                written = await client.put("/failover/after", b"2")
            except EtcdUnavailable:
                await asyncio.sleep(0.05)
        assert written is not None, f"no write committed within {DEADLINE_S} s"
        assert client.member != cut.endpoint and client.switches >= 1

        # The watch moves on too and sees a write made elsewhere.
        await other.put("/failover/elsewhere", b"3")
        while "/failover/elsewhere" not in seen:
            assert time.monotonic() - noticed < DEADLINE_S, f"the watch saw only {seen}"
            await asyncio.sleep(0.05)
        assert "/failover/after" in seen
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await client.close()
        await other.close()
