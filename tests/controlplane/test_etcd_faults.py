"""The control plane while etcd fails: stopped, frozen (SIGSTOP), killed mid-write.

The invariant under test: a 503 `unavailable` means nothing was written; an OK write is in
the history exactly once; `commit_unknown` is resolved by a retry with the same request_id.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from controlplane.store import ControlPlaneStore
from tsplit.errors import ERROR_METADATA_KEY
from tsplit.etcd import Etcd, EtcdUnavailable
from tsplit.v1 import controlplane_pb2 as pb

FAST = {"write_timeout_s": 1.0, "resolve_deadline_s": 2.0, "read_timeout_s": 2.0, "retry_deadline_s": 6.0}


def struct(body: dict) -> Struct:
    message = Struct()
    message.update(body)
    return message


def outcome(err: grpc.aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(ERROR_METADATA_KEY) or err.code().name


class Caller:
    def __init__(self, cp):
        self.stub, self.md = cp.stub(), cp.metadata(sub="ops")

    async def setup(self) -> str:
        """dep_f with one challenger; its id."""
        models = []
        for name in ("champ", "chal"):
            model = await self.stub.RegisterModel(pb.RegisterModelRequest(
                body=struct({"endpoint": "127.0.0.1:9001", "model_name": name})), metadata=self.md, timeout=10)
            models.append(model.model_id)
        await self.stub.CreateDeployment(pb.CreateDeploymentRequest(
            body=struct({"champion_model_id": models[0], "deployment_id": "dep_f"})), metadata=self.md, timeout=10)
        added = await self.traffic({"action": "add_challenger", "model_id": models[1], "traffic_pct": 5})
        return added.challenger.id

    async def traffic(self, body: dict, request_id: str = "", timeout: float = 15) -> pb.ManageTrafficResponse:
        return await self.stub.ManageTraffic(pb.ManageTrafficRequest(
            deployment_id="dep_f", body=struct(body), request_id=request_id), metadata=self.md, timeout=timeout)

    async def get(self, timeout: float = 10) -> pb.Deployment:
        return await self.stub.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_f"), metadata=self.md, timeout=timeout)


async def until_ok(call, timeout_s: float = 20):
    """Retry call() (bounded) until etcd answers again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if outcome(err) not in ("unavailable", "commit_unknown") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def history(endpoint: str, layout) -> list:
    async with Etcd(endpoint) as etcd:
        return await ControlPlaneStore(etcd, layout).history("org_1", "dep_f")


def assert_contiguous(entries) -> None:
    assert [e.cache_version for e in entries] == list(range(1, len(entries) + 1))
    assert all(e.config.cache_version == e.cache_version for e in entries)


async def test_etcd_stopped_answers_unavailable_writes_nothing_and_recovers(etcd_private, controlplane_factory, layout):
    caller = Caller(await controlplane_factory(etcd_private.endpoint, layout))
    await caller.setup()
    before = await caller.get()
    etcd_private.stop()
    for call in (caller.get, lambda: caller.traffic({"action": "toggle_shadow", "shadow_mode": True})):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert time.monotonic() - started < 5
        assert (info.value.code(), outcome(info.value)) == (grpc.StatusCode.UNAVAILABLE, "unavailable")
        assert "etcd" in info.value.details() and "Traceback" not in info.value.details()
    etcd_private.start()
    assert await until_ok(caller.get) == before  # nothing partial stored
    after = await caller.traffic({"action": "toggle_shadow", "shadow_mode": True})
    assert after.cache_version == before.cache_version + 1
    assert_contiguous(await history(etcd_private.endpoint, layout))


async def test_etcd_frozen_answers_unavailable_within_5s(etcd_private, controlplane_factory, layout):
    caller = Caller(await controlplane_factory(etcd_private.endpoint, layout))  # default timeouts
    await caller.setup()
    before = await caller.get()
    etcd_private.freeze()
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            caller.get(), caller.traffic({"action": "toggle_shadow", "shadow_mode": True}), return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        os.kill(etcd_private.process.pid, signal.SIGCONT)
    assert elapsed < 5
    assert [outcome(a) for a in answers] == ["unavailable", "unavailable"]
    assert await until_ok(caller.get) == before


def lose_the_first_write_answer(monkeypatch, *, before=None, after=None):
    """Make the first write transaction (deployment + history + record) lose its answer:
    before() runs just before it is sent (say, freeze or kill etcd); with after(), the
    write reaches etcd, then after() runs and its answer is lost."""
    real_txn = Etcd.txn
    armed = [True]

    async def txn(self, compare, success, failure=()):
        if armed[0] and len(success) > 1:
            armed[0] = False
            if before:
                before()
            result = await real_txn(self, compare, success, failure)
            if after:
                after()
                raise EtcdUnavailable("injected: the answer was lost")
            return result
        return await real_txn(self, compare, success, failure)

    monkeypatch.setattr(Etcd, "txn", txn)


@pytest.mark.parametrize("when", ["before", "after"])
async def test_write_lost_with_etcd_killed_is_commit_unknown_then_resolved(
        etcd_private, controlplane_factory, layout, monkeypatch, when):
    caller = Caller(await controlplane_factory(etcd_private.endpoint, layout, **FAST))
    await caller.setup()
    kill = etcd_private.kill
    lose_the_first_write_answer(monkeypatch, **{when: kill})
    body = {"action": "toggle_shadow", "shadow_mode": True}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await caller.traffic(body, request_id="lost-1")
    assert outcome(info.value) == "commit_unknown" and "request_id" in info.value.details()
    etcd_private.start()
    answer = await until_ok(lambda: caller.traffic(body, request_id="lost-1"))
    assert answer.changed and answer.cache_version == 3
    entries = await history(etcd_private.endpoint, layout)
    assert_contiguous(entries)
    assert [e.request_id for e in entries].count("lost-1") == 1


async def test_write_during_a_short_freeze_is_resolved_before_answering(
        etcd_private, controlplane_factory, layout, monkeypatch):
    caller = Caller(await controlplane_factory(etcd_private.endpoint, layout, **FAST))
    await caller.setup()
    pid = etcd_private.process.pid
    loop = asyncio.get_running_loop()

    def freeze_for_a_while():
        etcd_private.freeze()
        loop.call_later(1.5, os.kill, pid, signal.SIGCONT)  # past the 1 s write timeout

    lose_the_first_write_answer(monkeypatch, before=freeze_for_a_while)
    try:
        answer = await caller.traffic({"action": "toggle_shadow", "shadow_mode": True}, request_id="frozen-1")
    finally:
        await asyncio.sleep(1.6)  # the SIGCONT has run
    assert answer.changed and answer.cache_version == 3
    entries = await history(etcd_private.endpoint, layout)
    assert_contiguous(entries)
    assert [e.request_id for e in entries].count("frozen-1") == 1


async def test_unavailable_always_means_nothing_written_under_chaos(etcd_private, controlplane_factory, layout):
    """Writers keep changing one deployment while etcd is frozen, resumed, killed and
    restarted; then every answer is checked against the history."""
    caller = Caller(await controlplane_factory(etcd_private.endpoint, layout, **FAST))
    challenger_id = await caller.setup()
    rng = random.Random()
    sent: dict[str, dict] = {}
    outcomes: dict[str, str] = {}
    stop = asyncio.Event()

    async def writer(w: int):
        for i in range(200):
            if stop.is_set():
                return
            request_id = f"c-{w}-{i}"
            body = ({"action": "toggle_shadow", "shadow_mode": rng.random() < 0.5} if rng.random() < 0.5 else
                    {"action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": rng.randint(1, 20)})
            sent[request_id] = body
            try:
                answer = await caller.traffic(body, request_id=request_id, timeout=10)
                outcomes[request_id] = "ok" if answer.changed else "noop"
            except grpc.aio.AioRpcError as err:
                outcomes[request_id] = outcome(err)
                await asyncio.sleep(0.05)

    pid = etcd_private.process.pid
    writers = [asyncio.create_task(writer(w)) for w in range(6)]
    await asyncio.sleep(0.4)
    os.kill(pid, signal.SIGSTOP)
    await asyncio.sleep(1.5)
    os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(0.3)
    etcd_private.kill()
    await asyncio.sleep(0.5)
    etcd_private.start()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*writers), 30)

    unknown = [r for r, o in outcomes.items() if o == "commit_unknown"]
    for request_id in unknown:  # a retry with the same key learns the outcome
        answer = await until_ok(lambda: caller.traffic(sent[request_id], request_id=request_id))
        outcomes[request_id] = "ok" if answer.changed else "noop"
    entries = await history(etcd_private.endpoint, layout)
    assert_contiguous(entries)
    in_history = [e.request_id for e in entries]
    assert len(in_history) == len(set(in_history))
    counts = {o: sum(1 for v in outcomes.values() if v == o) for o in set(outcomes.values())}
    assert set(counts) <= {"ok", "noop", "unavailable"}, counts
    assert counts.get("unavailable", 0) > 0 and counts.get("ok", 0) > 0, counts
    for request_id, result in outcomes.items():
        if result == "unavailable":
            assert request_id not in in_history, f"{request_id} answered unavailable but was written"
        if result == "ok":
            assert request_id in in_history
    stored = await caller.get()
    assert stored.cache_version == len(entries)
