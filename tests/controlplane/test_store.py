"""controlplane.store against a real etcd: org scoping, versions, history, idempotency,
preconditions, tombstones, and a write whose etcd answer is lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from controlplane.actions import apply_traffic_action, parse_traffic_action
from controlplane.store import ControlPlaneStore, StoreSettings, check_request_id, utc_now_text
from tsplit.errors import ApiError
from tsplit.etcd import EtcdUnavailable
from tsplit.resources import Model, loads


@pytest.fixture
def store(etcd, layout) -> ControlPlaneStore:
    return ControlPlaneStore(etcd, layout, StoreSettings(retry_deadline_s=5, resolve_deadline_s=2))


def model(model_id: str, org_id: str = "org_1") -> Model:
    return Model(model_id, "127.0.0.1:9001", f"name-{model_id}", "", org_id)


def traffic(body: dict):
    action = parse_traffic_action(body)
    return lambda deployment, models: apply_traffic_action(deployment, action, models)


async def register(store, *model_ids, org_id="org_1"):
    for model_id in model_ids:
        await store.register_model(
            org_id, model(model_id, org_id), actor="u", request_id=f"reg-{model_id}", request_body={"m": model_id})


async def new_deployment(store, slug="dep_a", champion="mod_champ", org_id="org_1"):
    await register(store, champion, "mod_b", "mod_c", org_id=org_id)
    return await store.create_deployment(
        org_id, slug, champion, actor="creator", request_id=f"create-{slug}", request_body={"deployment_id": slug})


async def change(store, body, *, request_id, slug="dep_a", org_id="org_1", expected=None, actor="user-1"):
    return await store.change_deployment(
        org_id, slug, traffic(body), action=body["action"], request_body=body, actor=actor,
        request_id=request_id, expected_cache_version=expected)


async def test_models_are_scoped_by_org(store):
    await register(store, "mod_one")
    await register(store, "mod_two", org_id="org_2")
    assert [m.model_id for m in await store.list_models("org_1")] == ["mod_one"]
    assert (await store.get_model("org_1", "mod_one")).endpoint == "127.0.0.1:9001"
    with pytest.raises(ApiError) as err:
        await store.get_model("org_1", "mod_two")
    assert err.value.code == "model_not_found"
    with pytest.raises(ApiError) as err:
        await store.register_model("org_2", model("mod_one", "org_2"), actor="u", request_id="other", request_body={})
    assert err.value.code == "already_exists"


async def test_register_retry_with_same_request_id_answers_the_first_result(store, etcd, layout):
    first = await store.register_model("org_1", model("mod_x"), actor="u", request_id="r1", request_body={"a": 1})
    _, revision = await etcd.get_prefix(layout.prefix + "/")
    # Same key, same body: the original model, nothing written, even though model_id differs
    # (a generated id would differ on a retry).
    again = await store.register_model("org_1", model("mod_y"), actor="u", request_id="r1", request_body={"a": 1})
    assert again == first
    assert await etcd.revision() == revision
    with pytest.raises(ApiError) as err:
        await store.register_model("org_1", model("mod_z"), actor="u", request_id="r1", request_body={"a": 2})
    assert err.value.code == "invalid_request" and "request_id" in err.value.message


async def test_create_writes_version_one_and_history(store, etcd, layout):
    created = await new_deployment(store)
    assert (created.cache_version, created.updated_by, created.challengers) == (1, "creator", ())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created.updated_at)
    assert loads((await etcd.get(layout.deployment("dep_a"))).value) == created.to_json()
    [entry] = await store.history("org_1", "dep_a")
    assert (entry.cache_version, entry.action, entry.actor, entry.config) == (1, "create", "creator", created)
    assert entry.request_id == "create-dep_a"


async def test_create_rejects_existing_id_and_unknown_champion(store):
    await new_deployment(store)
    with pytest.raises(ApiError) as err:
        await store.create_deployment("org_2", "dep_a", "mod_champ", actor="u", request_id="x", request_body={})
    assert err.value.code == "already_exists"
    with pytest.raises(ApiError) as err:
        await store.create_deployment("org_1", "dep_b", "mod_nobody", actor="u", request_id="y", request_body={})
    assert err.value.code == "invalid_request" and "champion_model_id" in err.value.message
    with pytest.raises(ApiError) as err:  # another org's model is not "registered" for org_1
        await register(store, "mod_theirs", org_id="org_2")
        await store.create_deployment("org_1", "dep_c", "mod_theirs", actor="u", request_id="z", request_body={})
    assert err.value.code == "invalid_request"


async def test_change_writes_one_version_with_history_and_metadata(store, etcd, layout):
    await new_deployment(store)
    body = {"action": "add_challenger", "model_id": "mod_b", "traffic_pct": 12.5}
    result = await change(store, body, request_id="req-1")
    assert result.changed and not result.replayed
    assert result.deployment.cache_version == 2
    assert result.deployment.updated_by == "user-1"
    assert result.challenger.model_id == "mod_b" and result.challenger.traffic_bp == 1250
    assert await store.get_deployment("org_1", "dep_a") == result.deployment
    raw = loads((await etcd.get(layout.history_version("dep_a", 2))).value)
    assert raw == {
        "config": result.deployment.to_json(), "action": "add_challenger", "actor": "user-1",
        "at": result.deployment.updated_at, "request": body, "request_id": "req-1"}
    kv = await etcd.get(layout.request("dep_a", "req-1"))  # the id needs no escaping
    record = loads(kv.value)
    assert record["request_id"] == "req-1" and kv.lease != 0, "a record is lease-bound"
    # What a retry must answer, not a copy of the config: that is history version 2's.
    assert record["result"] == {"deployment_id": "dep_a", "cache_version": 2, "challenger_id": result.challenger.id}
    assert "request" not in record and len(record["request_digest"]) == 32


async def test_a_retry_answers_the_first_result_until_the_record_expires(etcd, layout):
    import asyncio
    store = ControlPlaneStore(etcd, layout, StoreSettings(idempotency_ttl_s=1))
    await new_deployment(store)
    body = {"action": "add_challenger", "model_id": "mod_b", "traffic_pct": 5}
    first = await change(store, body, request_id="once")
    await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="other")
    again = await change(store, body, request_id="once")
    assert again.replayed and again.deployment == first.deployment and again.challenger == first.challenger
    key = layout.request("dep_a", "once")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # ttl 1 s + a window of 1 s, and etcd's lease checks
    while await etcd.get(key) is not None:
        assert loop.time() < deadline, "the idempotency record outlived its lease"
        await asyncio.sleep(0.2)


async def test_noop_answers_current_version_and_writes_nothing(store, etcd):
    await new_deployment(store)
    await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="on")
    revision = await etcd.revision()
    result = await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="again")
    assert (result.changed, result.deployment.cache_version) == (False, 2)
    assert await etcd.revision() == revision


async def test_precondition_conflict_changes_nothing(store, etcd):
    await new_deployment(store)
    revision = await etcd.revision()
    with pytest.raises(ApiError) as err:
        await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="p", expected=7)
    assert err.value.code == "version_conflict" and "7" in err.value.message
    assert await etcd.revision() == revision
    ok = await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="p2", expected=1)
    assert ok.deployment.cache_version == 2


async def test_request_ids_with_slashes_stay_one_key(store, etcd, layout):
    await new_deployment(store)
    body = {"action": "toggle_shadow", "shadow_mode": True}
    first = await change(store, body, request_id="a/../b%2F")
    again = await change(store, body, request_id="a/../b%2F")
    assert again.replayed and again.deployment == first.deployment
    assert await etcd.get(layout.request("dep_a", "a%2F..%2Fb%252F")) is not None


async def test_retry_with_same_request_id_applies_once(store, etcd):
    await new_deployment(store)
    body = {"action": "add_challenger", "model_id": "mod_b", "traffic_pct": 10}
    first = await change(store, body, request_id="same", expected=1)
    revision = await etcd.revision()
    # The precondition no longer holds, but a retry answers the original result.
    again = await change(store, body, request_id="same", expected=1)
    assert again.replayed and again.deployment == first.deployment and again.challenger == first.challenger
    assert await etcd.revision() == revision
    assert [e.cache_version for e in await store.history("org_1", "dep_a")] == [1, 2]


async def test_another_org_sees_not_found_and_authorize_runs_after_the_org_check(store):
    await new_deployment(store)
    calls = []

    def authorize():
        calls.append(1)
        raise ApiError("forbidden", "no")

    for org, code in (("org_2", "deployment_not_found"), ("org_1", "forbidden")):
        with pytest.raises(ApiError) as err:
            await store.change_deployment(
                org, "dep_a", traffic({"action": "toggle_shadow", "shadow_mode": True}), action="toggle_shadow",
                request_body={}, actor="u", request_id="q", authorize=authorize)
        assert err.value.code == code
    assert len(calls) == 1
    for read in (store.get_deployment, store.history):
        with pytest.raises(ApiError) as err:
            await read("org_2", "dep_a")
        assert err.value.code == "deployment_not_found"
    assert await store.list_deployments("org_2") == []


async def test_delete_keeps_history_and_the_slug_is_never_reused(store, etcd, layout):
    await new_deployment(store)
    await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="t")
    assert await store.delete_deployment("org_1", "dep_a", actor="u", request_id="del") == "dep_a"
    assert await etcd.get(layout.deployment("dep_a")) is None
    assert [e.cache_version for e in await store.history("org_1", "dep_a")] == [1, 2]
    # The retry of the delete answers as the first one did.
    assert await store.delete_deployment("org_1", "dep_a", actor="u", request_id="del") == "dep_a"
    with pytest.raises(ApiError) as err:
        await store.get_deployment("org_1", "dep_a")
    assert err.value.code == "deployment_not_found"
    with pytest.raises(ApiError) as err:
        await store.create_deployment("org_1", "dep_a", "mod_champ", actor="u", request_id="c2", request_body={})
    assert err.value.code == "already_exists"
    with pytest.raises(ApiError) as err:
        await store.history("org_2", "dep_a")
    assert err.value.code == "deployment_not_found"


class LosesWriteAnswers:
    """The real etcd client, but the answer to the next `times` write transactions is lost:
    with commit=True the write reaches etcd first (the answer is lost on the way back)."""

    def __init__(self, etcd, *, commit: bool, times: int = 1):
        self.etcd, self.commit, self.remaining, self.lost = etcd, commit, times, 0

    def __getattr__(self, name):
        return getattr(self.etcd, name)

    async def txn(self, compare, success, failure=()):
        is_write = len(success) > 1  # the fence puts one key
        if is_write and self.remaining:
            self.remaining -= 1
            self.lost += 1
            if self.commit:
                await self.etcd.txn(compare, success, failure)
            raise EtcdUnavailable("injected: the answer was lost")
        return await self.etcd.txn(compare, success, failure)


@pytest.mark.parametrize("committed", [True, False])
async def test_lost_answer_is_resolved_before_answering(etcd, layout, committed):
    plain = ControlPlaneStore(etcd, layout)
    await new_deployment(plain)
    flaky = LosesWriteAnswers(etcd, commit=committed)
    store = ControlPlaneStore(flaky, layout, StoreSettings(resolve_deadline_s=2))
    result = await change(store, {"action": "toggle_shadow", "shadow_mode": True}, request_id="lost")
    assert flaky.lost == 1
    # Committed: the fence finds the record and answers it. Not committed: the fence proves
    # it never will, and the write is retried. Either way exactly one version.
    assert result.changed and result.deployment.cache_version == 2
    history = await plain.history("org_1", "dep_a")
    assert [(e.cache_version, e.request_id) for e in history] == [(1, "create-dep_a"), (2, "lost")]


async def test_lost_create_answer_is_found(etcd, layout):
    plain = ControlPlaneStore(etcd, layout)
    await register(plain, "mod_champ")
    store = ControlPlaneStore(LosesWriteAnswers(etcd, commit=True), layout)
    created = await store.create_deployment(
        "org_1", "dep_lost", "mod_champ", actor="u", request_id="c", request_body={})
    assert created == await plain.get_deployment("org_1", "dep_lost")


@given(st.text(max_size=140) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=140))
def test_request_ids_are_checked(text):
    if text and re.fullmatch(r"[!-~]{1,128}", text):
        assert check_request_id(text) == text
    elif text:
        with pytest.raises(ApiError):
            check_request_id(text)
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", check_request_id(text))


def test_time_format():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now_text())
