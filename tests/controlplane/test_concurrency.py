"""Concurrent writers on one deployment through two control-plane replicas over one etcd:
nobody loses an update, versions are contiguous, the history replays to the stored config,
and nothing above 50 % is ever stored."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from controlplane.actions import apply_traffic_action, parse_traffic_action
from controlplane.service import deployment_from_proto
from controlplane.store import ControlPlaneStore
from tsplit.errors import ERROR_METADATA_KEY
from tsplit.resources import Deployment
from tsplit.v1 import controlplane_pb2 as pb

WRITERS = 32


def struct(body: dict) -> Struct:
    message = Struct()
    message.update(body)
    return message


def traffic_shape(deployment: Deployment) -> tuple:
    """What routing depends on, with challenger ids left out (add_challenger makes new ones)."""
    return (deployment.champion_model_id, deployment.shadow_mode,
            tuple((c.model_id, c.traffic_bp, c.is_active) for c in deployment.challengers))


class Caller:
    def __init__(self, cp):
        self.stub, self.md = cp.stub(), cp.metadata(sub="writer")

    async def register(self, name: str) -> str:
        model = await self.stub.RegisterModel(pb.RegisterModelRequest(
            body=struct({"endpoint": "127.0.0.1:9001", "model_name": name})), metadata=self.md, timeout=10)
        return model.model_id

    async def traffic(self, body: dict, request_id: str = "") -> pb.ManageTrafficResponse:
        return await self.stub.ManageTraffic(pb.ManageTrafficRequest(
            deployment_id="dep_busy", body=struct(body), request_id=request_id), metadata=self.md, timeout=20)


@pytest.fixture
async def replicas(controlplane_factory, etcd_endpoint, layout):
    first = await controlplane_factory(etcd_endpoint, layout)
    second = await controlplane_factory(etcd_endpoint, layout)
    return Caller(first), Caller(second)


async def busy_deployment(caller: Caller) -> dict[str, list[str]]:
    """dep_busy with challengers A and B (10 % each) and C1..C6 (1 % each); N1..N8 registered."""
    names = {"champ": ["champ"], "ab": ["A", "B"], "c": [f"C{i}" for i in range(6)], "n": [f"N{i}" for i in range(8)]}
    ids = {group: [await caller.register(n) for n in members] for group, members in names.items()}
    await caller.stub.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": ids["champ"][0], "deployment_id": "dep_busy"})), metadata=caller.md, timeout=10)
    challengers = {}
    for model_id, pct in [(m, 10) for m in ids["ab"]] + [(m, 1) for m in ids["c"]]:
        answer = await caller.traffic({"action": "add_challenger", "model_id": model_id, "traffic_pct": pct})
        challengers[model_id] = answer.challenger.id
    return {"ab": [challengers[m] for m in ids["ab"]], "c": [challengers[m] for m in ids["c"]], "n": ids["n"]}


def random_valid_actions(rng: random.Random, ids: dict[str, list[str]]) -> list[dict]:
    """32 actions each valid in every order: A and B stay <= 10 %, C's are removed once each,
    N's added once each at <= 2 %: at most 20 + 6 + 16 = 42 % in any state."""
    actions = [{"action": "add_challenger", "model_id": m, "traffic_pct": rng.choice([1, 1.25, 2])} for m in ids["n"]]
    actions += [{"action": "remove_challenger", "challenger_id": c} for c in ids["c"]]
    actions += [{"action": "update_traffic", "challenger_id": rng.choice(ids["ab"]),
                 "traffic_pct": rng.randint(100, 1000) / 100} for _ in range(10)]
    actions += [{"action": "toggle_shadow", "shadow_mode": rng.random() < 0.5} for _ in range(8)]
    assert len(actions) == WRITERS
    rng.shuffle(actions)
    return actions


async def test_concurrent_writers_never_lose_an_update(replicas, etcd, layout):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ids = await busy_deployment(replicas[0])
    start_version = 9  # create + 8 adds
    actions = random_valid_actions(rng, ids)
    answers = await asyncio.wait_for(asyncio.gather(*(
        replicas[i % 2].traffic(body, request_id=f"w-{i}") for i, body in enumerate(actions))), 60)

    changed = [a for a in answers if a.changed]
    versions = sorted(a.cache_version for a in changed)
    assert versions == list(range(start_version + 1, start_version + 1 + len(changed))), f"seed {seed}"
    store = ControlPlaneStore(etcd, layout)
    stored = await store.get_deployment("org_1", "dep_busy")
    assert stored.cache_version == start_version + len(changed)
    models = await store.org_models("org_1")
    for body, answer in zip(actions, answers):
        if not answer.changed:  # the action is a no-op on the version it answers
            current = deployment_from_proto(answer.deployment)
            assert apply_traffic_action(current, parse_traffic_action(body), models)[0] == current
            assert answer.cache_version == current.cache_version <= stored.cache_version

    history = await store.history("org_1", "dep_busy")
    assert [e.cache_version for e in history] == list(range(1, stored.cache_version + 1))
    assert history[-1].config == stored
    by_version = {e.cache_version: e for e in history}
    for answer in changed:
        assert deployment_from_proto(answer.deployment) == by_version[answer.cache_version].config
    writer_ids = [e.request_id for e in history if e.request_id.startswith("w-")]
    assert sorted(writer_ids) == sorted(f"w-{i}" for i, a in enumerate(answers) if a.changed)
    # Replaying each version's request on the version before gives that version.
    for before, after in zip(history, history[1:]):
        replayed, _ = apply_traffic_action(before.config, parse_traffic_action(after.request), models)
        assert traffic_shape(replayed) == traffic_shape(after.config), f"version {after.cache_version}, seed {seed}"
    assert all(e.config.challenger_bp <= 5000 for e in history)


async def test_a_noop_answers_the_current_version_and_writes_nothing(replicas, etcd):
    caller = replicas[0]
    ids = await busy_deployment(caller)
    on = await caller.traffic({"action": "toggle_shadow", "shadow_mode": True})
    revision = await etcd.revision()
    again = await caller.traffic({"action": "toggle_shadow", "shadow_mode": True})
    same = await replicas[1].traffic({"action": "update_traffic", "challenger_id": ids["ab"][0], "traffic_pct": 10})
    assert (again.changed, again.cache_version, same.changed, same.cache_version) == (False, on.cache_version) * 2
    assert await etcd.revision() == revision


async def test_racing_adds_past_the_cap_some_fit_the_rest_are_refused(replicas, etcd, layout):
    caller = replicas[0]
    champ = await caller.register("champ")
    candidates = [await caller.register(f"M{i}") for i in range(10)]
    await caller.stub.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": champ, "deployment_id": "dep_busy"})), metadata=caller.md, timeout=10)

    async def add(i: int, model_id: str):
        try:
            return await replicas[i % 2].traffic({"action": "add_challenger", "model_id": model_id, "traffic_pct": 10})
        except grpc.aio.AioRpcError as err:
            return dict(err.trailing_metadata())[ERROR_METADATA_KEY]

    outcomes = await asyncio.wait_for(asyncio.gather(*(add(i, m) for i, m in enumerate(candidates))), 60)
    accepted = [o for o in outcomes if not isinstance(o, str)]
    assert len(accepted) == 5  # 5 x 10 % fill the 50 % cap exactly
    assert [o for o in outcomes if isinstance(o, str)] == ["invalid_traffic_config"] * 5
    history = await ControlPlaneStore(etcd, layout).history("org_1", "dep_busy")
    assert [e.cache_version for e in history] == list(range(1, 7))
    assert max(e.config.challenger_bp for e in history) == 5000
    assert sorted(a.cache_version for a in accepted) == [2, 3, 4, 5, 6]
