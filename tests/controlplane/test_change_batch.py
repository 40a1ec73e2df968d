"""plan_batch without etcd: a batch answers every change exactly as applying the changes one
after another would, versions are contiguous, and the transaction holds one compare and
put per written version plus the deployment's own."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from controlplane.actions import apply_traffic_action, parse_traffic_action
from controlplane.change_batch import ChangeResult, OrgModels, PendingChange, plan_batch
from controlplane.records import Record, change_result, record_value
from tsplit.errors import ApiError
from tsplit.layout import Layout
from tsplit.resources import Challenger, Deployment, Model, loads

LAYOUT = Layout("/unit")
MODELS = {m: Model(m, "127.0.0.1:9001", m, "", "org_1") for m in ("mod_champ", "mod_a", "mod_b", "mod_c", "mod_d")}
ORG_1_MODELS = dict(MODELS)
MODELS["mod_other"] = Model("mod_other", "127.0.0.1:9001", "x", "", "org_2")
START = Deployment("dep_u", "org_1", "mod_champ", (
    Challenger("ch_a", "mod_a", 1000), Challenger("ch_b", "mod_b", 500), Challenger("ch_old", "mod_c", 100, False),
), cache_version=7)


def traffic(body: dict):
    def mutate(deployment, models):
        return apply_traffic_action(deployment, parse_traffic_action(body), models)
    return mutate


def pending(body: dict, request_id: str, *, org_id: str = "org_1", expected: int | None = None,
            authorize=lambda: None) -> PendingChange:
    return PendingChange(
        org_id, "dep_u", traffic(body), str(body.get("action")), body, "actor-1", request_id,
        LAYOUT.request("dep_u", request_id), expected, authorize, deadline=1e12)


def plan(changes, state=START, records=None, **kw):
    kw.setdefault("max_txn_bytes", 10**9)
    kw.setdefault("compare_all_records", False)
    return asyncio.run(plan_batch(LAYOUT, changes, state, 41, records or {}, MODELS, now="T", write_id="w-1", **kw))


def shape(deployment: Deployment) -> tuple:
    """Routing shape with generated challenger ids left out (add_challenger makes new ones)."""
    return (deployment.shadow_mode, tuple((c.model_id, c.traffic_bp, c.is_active) for c in deployment.challengers))


bodies = st.one_of(
    st.builds(lambda c, p: {"action": "update_traffic", "challenger_id": c, "traffic_pct": p},
              st.sampled_from(["ch_a", "ch_b", "ch_old", "ch_none"]), st.sampled_from([1, 2.5, 10, 20, 30, 45, 60])),
    st.builds(lambda s: {"action": "toggle_shadow", "shadow_mode": s}, st.booleans()),
    st.builds(lambda m, p: {"action": "add_challenger", "model_id": m, "traffic_pct": p},
              st.sampled_from(["mod_c", "mod_d", "mod_a", "mod_champ", "mod_other", "mod_none"]),
              st.sampled_from([1, 5, 20, 40])),
    st.builds(lambda c: {"action": "remove_challenger", "challenger_id": c}, st.sampled_from(["ch_a", "ch_b", "ch_old"])),
    st.just({"action": "update_traffic", "challenger_id": "ch_a", "trafic_pct": 3}),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=12))
def test_a_batch_answers_as_the_changes_applied_one_by_one(sequence):
    changes = [pending(body, f"r-{i}") for i, body in enumerate(sequence)]
    result = plan(changes)
    assert len(result.outcomes) == len(changes) and result.deferred == 0

    current, written = START, 0
    for body, outcome in zip(sequence, result.outcomes):
        try:
            new, _ = apply_traffic_action(current, parse_traffic_action(body), ORG_1_MODELS)
        except ApiError as err:
            assert isinstance(outcome, ApiError) and outcome.code == err.code
            continue
        assert isinstance(outcome, ChangeResult)
        if new == current:
            assert not outcome.changed and outcome.deployment == current
            continue
        written += 1
        assert outcome.changed and outcome.deployment.cache_version == START.cache_version + written
        assert shape(outcome.deployment) == shape(new)
        assert outcome.deployment.challenger_bp <= 5000
        current = outcome.deployment
    assert result.final == current
    if written:
        # One put of the deployment, then a history version and a record per change.
        assert len(result.ops) == 1 + 2 * written and len(result.compares) == 1 + 2 * written
        stored = loads(result.ops[0].request_put.value)
        assert Deployment.from_json(stored) == current
        history_keys = [op.request_put.key.decode() for op in result.ops[1::2]]
        assert history_keys == [LAYOUT.history_version("dep_u", START.cache_version + n) for n in range(1, written + 1)]
        assert [k for k, _ in result.written_keys] == [
            changes[i].request_key for i, o in enumerate(result.outcomes) if isinstance(o, ChangeResult) and o.changed]
    else:
        assert result.ops == [] and not result.writes


def test_a_failing_change_does_not_stop_the_others():
    changes = [
        pending({"action": "update_traffic", "challenger_id": "ch_a", "traffic_pct": 40}, "first"),
        pending({"action": "update_traffic", "challenger_id": "ch_b", "traffic_pct": 20}, "too-much"),
        pending({"action": "toggle_shadow", "shadow_mode": True}, "third"),
    ]
    first, too_much, third = plan(changes).outcomes
    assert first.deployment.cache_version == 8
    assert isinstance(too_much, ApiError) and too_much.code == "invalid_traffic_config"
    assert third.deployment.cache_version == 9 and third.deployment.shadow_mode


def test_checks_in_order_replay_org_role_precondition():
    def forbid():
        raise ApiError("forbidden", "no")

    toggle = {"action": "toggle_shadow", "shadow_mode": True}
    changes = [
        pending(toggle, "other-org", org_id="org_2", authorize=forbid),
        pending(toggle, "viewer", authorize=forbid),
        pending(toggle, "stale", expected=6),
        pending(toggle, "ok", expected=7),
        pending(toggle, "ok"),  # the same request_id again: the first one's answer
        pending({"action": "toggle_shadow", "shadow_mode": False}, "ok"),  # same id, another body
    ]
    outcomes = plan(changes).outcomes
    assert [o.code for o in outcomes[:3]] == ["deployment_not_found", "forbidden", "version_conflict"]
    assert outcomes[3].changed and outcomes[3].deployment.cache_version == 8
    assert outcomes[4].replayed and outcomes[4].deployment == outcomes[3].deployment
    assert outcomes[5].code == "invalid_request"


def test_a_committed_record_is_answered_with_its_versions_config_and_compared():
    toggle = {"action": "toggle_shadow", "shadow_mode": True}
    change = pending(toggle, "again")
    value = record_value(request_id="again", org_id="org_1", action="toggle_shadow", request=dict(reversed(toggle.items())),
                         at="T0", result=change_result("dep_u", 7, "ch_a"), write_id="w-0")
    records = {change.request_key: Record(33, value, START)}
    result = plan([change], records=records, compare_all_records=True)
    [answer] = result.outcomes
    assert answer.replayed and not result.writes
    assert answer.deployment == START and answer.challenger == START.challengers[0]
    # The answer assumed the record as read: the confirming transaction compares it.
    assert any(c.key.decode() == change.request_key and c.mod_revision == 33 for c in result.compares)


def test_a_full_transaction_defers_the_rest_to_the_next_batch():
    changes = [pending({"action": "update_traffic", "challenger_id": "ch_a", "traffic_pct": p}, f"r-{p}")
               for p in (2, 3, 4, 5)]
    one = len(b"".join(op.request_put.value for op in plan(changes[:1]).ops[1:]))
    result = plan(changes, max_txn_bytes=int(one * 2.5))
    assert result.deferred == 2 and len(result.outcomes) == 2
    assert [o.deployment.cache_version for o in result.outcomes] == [8, 9]
    # The first writer always goes, whatever its size.
    assert plan(changes, max_txn_bytes=1).deferred == 3


def test_org_models_sees_one_org_and_remembers_misses():
    view = OrgModels(MODELS, "org_1")
    assert "mod_a" in view and "mod_other" not in view and "mod_none" not in view
    assert view.misses == {"mod_other", "mod_none"}
    assert sorted(view) == ["mod_a", "mod_b", "mod_c", "mod_champ", "mod_d"] and len(view) == 5
    with pytest.raises(KeyError):
        view["mod_other"]


def test_records_hold_no_config_and_stored_values_are_compact_json_never_nan():
    import json

    from tsplit.resources import dumps

    body = {"action": "update_traffic", "challenger_id": "ch_a", "traffic_pct": 12.5}
    result = plan([pending(body, "fine")])
    record = loads(result.ops[2].request_put.value)
    assert "config" not in json.dumps(record) and "deployment" not in record["result"]
    assert record["result"] == {"deployment_id": "dep_u", "cache_version": 8, "challenger_id": "ch_a"}
    value = {"request": body, "n": [1, 2.5, None, True, "é"]}
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def shadow_on(deployment, models):
        return Deployment(**{**deployment.__dict__, "shadow_mode": True}), None

    nan_body = {"action": "toggle_shadow", "shadow_mode": True, "extra": [float("nan")]}
    change = PendingChange("org_1", "dep_u", shadow_on, "toggle_shadow", nan_body, "actor-1", "nan",
                           LAYOUT.request("dep_u", "nan"), None, lambda: None, deadline=1e12)
    result = plan([change])
    assert isinstance(result.outcomes[0], ValueError) and not result.ops
