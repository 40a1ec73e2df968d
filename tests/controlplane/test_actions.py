"""The validation core, rule by rule: good and bad bodies with the exact error code."""

from __future__ import annotations

import math

import pytest

from controlplane import actions
from controlplane.actions import (
    TrafficAction, apply_desired_state, apply_traffic_action, check_deployment_id, check_endpoint,
    parse_deployment_creation, parse_desired_state, parse_model_registration, parse_rollback,
    parse_traffic_action, rollback_to,
)
from tsplit.errors import ApiError
from tsplit.allocation import SlotRange, moved_slots, slot_counts
from tsplit.resources import Challenger, Deployment, Model

CHAMPION, MODEL_B, MODEL_C, MODEL_D, UNREGISTERED = "mod_champ", "mod_bbbb", "mod_cccc", "mod_dddd", "mod_none"
MODELS = {m: Model(m, "127.0.0.1:9001", m.removeprefix("mod_"), org_id="org_1")
          for m in (CHAMPION, MODEL_B, MODEL_C, MODEL_D)}


def deployment(*challengers: Challenger, shadow_mode: bool = False) -> Deployment:
    return Deployment("dep_xK8m", "org_1", CHAMPION, tuple(challengers), shadow_mode,
                      cache_version=7, updated_at="2026-11-22T13:00:00Z", updated_by="user-1")


ACTIVE_B = Challenger("ch_bbb111", MODEL_B, 1000, True)     # 10 %
ACTIVE_C = Challenger("ch_ccc222", MODEL_C, 3000, True)     # 30 %
REMOVED_D = Challenger("ch_ddd333", MODEL_D, 2000, False)
CURRENT = deployment(ACTIVE_B, ACTIVE_C, REMOVED_D)          # 40 % to challengers


def rejected(call, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


# --- parse_traffic_action: the structural rules ------------------------------------------

GOOD_BODIES = [
    ({"action": "add_challenger", "model_id": "mod_nY5kT2Wq", "traffic_pct": 10},
     TrafficAction("add_challenger", model_id="mod_nY5kT2Wq", traffic_bp=1000)),
    ({"action": "add_challenger", "model_id": "mod_a", "traffic_pct": 10.0},  # Struct's float
     TrafficAction("add_challenger", model_id="mod_a", traffic_bp=1000)),
    ({"action": "add_challenger", "model_id": "mod_a", "traffic_pct": 12.34},
     TrafficAction("add_challenger", model_id="mod_a", traffic_bp=1234)),
    ({"action": "update_traffic", "challenger_id": "ch_abc123", "traffic_pct": 1},
     TrafficAction("update_traffic", challenger_id="ch_abc123", traffic_bp=100)),
    ({"action": "update_traffic", "challenger_id": "ch_abc123", "traffic_pct": 50},
     TrafficAction("update_traffic", challenger_id="ch_abc123", traffic_bp=5000)),
    ({"action": "remove_challenger", "challenger_id": "ch_abc123"},
     TrafficAction("remove_challenger", challenger_id="ch_abc123")),
    ({"action": "toggle_shadow", "shadow_mode": True}, TrafficAction("toggle_shadow", shadow_mode=True)),
    ({"action": "toggle_shadow", "shadow_mode": False}, TrafficAction("toggle_shadow", shadow_mode=False)),
]


@pytest.mark.parametrize("body,expected", GOOD_BODIES)
def test_good_traffic_bodies_parse(body, expected):
    assert parse_traffic_action(body) == expected


# Each of these times 100 is not an integer in floats (1.13 * 100 == 112.99999999999999).
@pytest.mark.parametrize("pct,bp", [(1.13, 113), (1.1, 110), (2.07, 207), (2.2, 220), (18.15, 1815), (40.95, 4095)])
def test_two_decimal_shares_are_exact_despite_float_error(pct, bp):
    assert pct * 100 != bp  # the float trap the parser must avoid
    parsed = parse_traffic_action({"action": "add_challenger", "model_id": "mod_a", "traffic_pct": pct})
    assert parsed.traffic_bp == bp


ADD = {"action": "add_challenger", "model_id": "mod_a"}
UPDATE = {"action": "update_traffic", "challenger_id": "ch_abc123"}

BAD_BODIES = [
    # (body, field the message must name, extra words the message must contain)
    ({**ADD, "traffic_pct": "10"}, "traffic_pct", "string"),
    ({**ADD, "traffic_pct": True}, "traffic_pct", "boolean"),
    ({**UPDATE, "traffic_pct": False}, "traffic_pct", "boolean"),
    ({**ADD, "traffic_pct": None}, "traffic_pct", "null"),
    ({**ADD, "traffic_pct": [10]}, "traffic_pct", "list"),
    ({**ADD, "traffic_pct": math.nan}, "traffic_pct", "nan"),
    ({**ADD, "traffic_pct": math.inf}, "traffic_pct", "inf"),
    ({**ADD, "traffic_pct": -math.inf}, "traffic_pct", "inf"),
    ({**ADD, "traffic_pct": 0.5}, "traffic_pct", "0.5"),
    ({**ADD, "traffic_pct": 0}, "traffic_pct", "1 to 50"),
    ({**ADD, "traffic_pct": -10}, "traffic_pct", "1 to 50"),
    ({**ADD, "traffic_pct": 50.01}, "traffic_pct", "50.01"),
    ({**ADD, "traffic_pct": 51}, "traffic_pct", "51"),
    ({**ADD, "traffic_pct": 1e300}, "traffic_pct", "1 to 50"),
    ({**ADD, "traffic_pct": 12.345}, "traffic_pct", "two decimals"),
    ({**UPDATE, "traffic_pct": 10.001}, "traffic_pct", "two decimals"),
    ({**ADD, "traffic_pct": 0.29 * 100}, "traffic_pct", "two decimals"),  # 28.999999999999996 is not 29
    ({"action": "add_challenger", "traffic_pct": 10}, "model_id", "needs"),
    ({"action": "add_challenger", "model_id": "mod_a"}, "traffic_pct", "needs"),
    ({"action": "update_traffic", "traffic_pct": 10}, "challenger_id", "needs"),
    ({"action": "update_traffic", "challenger_id": "ch_abc123"}, "traffic_pct", "needs"),
    ({"action": "remove_challenger"}, "challenger_id", "needs"),
    ({"action": "toggle_shadow"}, "shadow_mode", "needs"),
    ({"model_id": "mod_a", "traffic_pct": 10}, "action", "required"),
    ({**ADD, "trafic_pct": 10}, "trafic_pct", "did you mean 'traffic_pct'"),
    ({**ADD, "traffic_pct": 10, "comment": "x"}, "comment", "unknown field"),
    ({"action": "promote", "model_id": "mod_a"}, "action", "promote"),
    ({"action": "ADD_CHALLENGER", "model_id": "mod_a", "traffic_pct": 10}, "action", "unknown"),
    ({"action": 1}, "action", "string"),
    ({"action": None}, "action", "string"),
    ({"action": "remove_challenger", "challenger_id": "ch_abc123", "traffic_pct": 10}, "traffic_pct", "does not take"),
    ({"action": "remove_challenger", "challenger_id": "ch_abc123", "model_id": "mod_a"}, "model_id", "does not take"),
    ({**ADD, "traffic_pct": 10, "challenger_id": "ch_abc123"}, "challenger_id", "does not take"),
    ({**ADD, "traffic_pct": 10, "shadow_mode": True}, "shadow_mode", "does not take"),
    ({"action": "toggle_shadow", "shadow_mode": True, "traffic_pct": 10}, "traffic_pct", "does not take"),
    ({"action": "update_traffic", "challenger_id": "ch_abc123", "traffic_pct": 5, "model_id": "mod_a"},
     "model_id", "does not take"),
    ({"action": "toggle_shadow", "shadow_mode": "true"}, "shadow_mode", "boolean"),
    ({"action": "toggle_shadow", "shadow_mode": 1}, "shadow_mode", "boolean"),
    ({"action": "toggle_shadow", "shadow_mode": None}, "shadow_mode", "boolean"),
    ({"action": "add_challenger", "model_id": 12, "traffic_pct": 10}, "model_id", "string"),
    ({"action": "add_challenger", "model_id": "", "traffic_pct": 10}, "model_id", "mod_"),
    ({"action": "add_challenger", "model_id": "nY5kT2Wq", "traffic_pct": 10}, "model_id", "mod_"),
    ({"action": "add_challenger", "model_id": "mod_a/../b", "traffic_pct": 10}, "model_id", "mod_"),
    ({"action": "remove_challenger", "challenger_id": "ch_" + "x" * 65}, "challenger_id", "ch_"),
    ({"action": "remove_challenger", "challenger_id": ["ch_abc123"]}, "challenger_id", "string"),
]


@pytest.mark.parametrize("body,field,words", BAD_BODIES)
def test_bad_traffic_bodies_are_422_naming_the_field(body, field, words):
    err = rejected(parse_traffic_action, body)
    assert err.code == "invalid_traffic_config"
    assert err.kind.http_status == 422
    assert field in err.message
    assert words.lower() in err.message.lower()


@pytest.mark.parametrize("body", [None, [], "add_challenger", 10])
def test_a_body_that_is_not_an_object_is_invalid_json(body):
    assert rejected(parse_traffic_action, body).code == "invalid_json"


def test_a_huge_string_is_not_echoed_whole():
    err = rejected(parse_traffic_action, {**ADD, "traffic_pct": "9" * 10_000})
    assert len(err.message) < 200


# --- apply_traffic_action: the rules against current state --------------------------------

def test_add_challenger_appends_a_new_active_challenger_with_a_fresh_id():
    result, added = apply_traffic_action(CURRENT, parse_traffic_action(
        {"action": "add_challenger", "model_id": MODEL_D, "traffic_pct": 10}), MODELS)
    assert added is not None and added.is_active and added.model_id == MODEL_D and added.traffic_bp == 1000
    assert actions.is_valid_id(added.id, "ch_") and len(added.id) == len("ch_") + 6
    assert added.id not in {c.id for c in CURRENT.challengers}
    assert result.challengers == CURRENT.challengers + (added,)
    assert result.challenger_bp == 5000 and result.champion_bp == 5000
    # metadata is the store's to set
    assert (result.cache_version, result.updated_at, result.updated_by) == (7, CURRENT.updated_at, "user-1")


def test_add_a_removed_model_again_makes_a_new_challenger():
    _, added = apply_traffic_action(CURRENT, TrafficAction("add_challenger", model_id=MODEL_D, traffic_bp=500), MODELS)
    assert added is not None and added.id != REMOVED_D.id


def test_remove_challenger_keeps_it_inactive_and_its_share_returns_to_the_champion():
    result, removed = apply_traffic_action(CURRENT, TrafficAction("remove_challenger", challenger_id=ACTIVE_C.id), MODELS)
    assert removed == Challenger(ACTIVE_C.id, MODEL_C, 3000, False)
    assert result.challengers == (ACTIVE_B, removed, REMOVED_D)
    assert result.champion_bp == 9000


def test_update_traffic_changes_one_share():
    result, updated = apply_traffic_action(CURRENT, TrafficAction("update_traffic", challenger_id=ACTIVE_B.id,
                                                                  traffic_bp=2000), MODELS)
    assert updated == Challenger(ACTIVE_B.id, MODEL_B, 2000, True)
    assert result.challengers == (updated, ACTIVE_C, REMOVED_D)
    assert result.challenger_bp == 5000


def test_toggle_shadow_touches_no_challenger():
    result, touched = apply_traffic_action(CURRENT, TrafficAction("toggle_shadow", shadow_mode=True), MODELS)
    assert touched is None and result.shadow_mode and result.challengers == CURRENT.challengers


@pytest.mark.parametrize("action", [
    TrafficAction("update_traffic", challenger_id=ACTIVE_B.id, traffic_bp=ACTIVE_B.traffic_bp),
    TrafficAction("toggle_shadow", shadow_mode=False),
])
def test_no_op_actions_return_an_equal_deployment(action):
    result, _ = apply_traffic_action(CURRENT, action, MODELS)
    assert result == CURRENT and result.same_traffic(CURRENT)


BAD_STATE_ACTIONS = [
    # (body, field the message names, words)
    ({"action": "add_challenger", "model_id": UNREGISTERED, "traffic_pct": 5}, "model_id", "not a registered model"),
    ({"action": "add_challenger", "model_id": CHAMPION, "traffic_pct": 5}, "model_id", "champion"),
    ({"action": "add_challenger", "model_id": MODEL_B, "traffic_pct": 5}, "model_id", "already an active challenger"),
    ({"action": "add_challenger", "model_id": MODEL_D, "traffic_pct": 10.01}, "traffic_pct", "50.01 %"),
    ({"action": "add_challenger", "model_id": MODEL_D, "traffic_pct": 50}, "traffic_pct", "90 %"),
    ({"action": "update_traffic", "challenger_id": ACTIVE_B.id, "traffic_pct": 20.5}, "traffic_pct", "limit is 50 %"),
    ({"action": "update_traffic", "challenger_id": "ch_nosuch", "traffic_pct": 5}, "challenger_id", "not a challenger"),
    ({"action": "update_traffic", "challenger_id": REMOVED_D.id, "traffic_pct": 5}, "challenger_id", "removed"),
    ({"action": "remove_challenger", "challenger_id": "ch_nosuch"}, "challenger_id", "not a challenger"),
    ({"action": "remove_challenger", "challenger_id": REMOVED_D.id}, "challenger_id", "removed"),
]


@pytest.mark.parametrize("body,field,words", BAD_STATE_ACTIONS)
def test_actions_that_break_a_rule_of_the_current_state_are_422(body, field, words):
    err = rejected(apply_traffic_action, CURRENT, parse_traffic_action(body), MODELS)
    assert err.code == "invalid_traffic_config"
    assert field in err.message and words in err.message


def test_models_of_another_org_are_not_registered_for_this_caller():
    other_org_models = {MODEL_D: Model(MODEL_D, "127.0.0.1:9001", "d", org_id="org_2")}
    err = rejected(apply_traffic_action, CURRENT, TrafficAction("add_challenger", model_id=MODEL_B, traffic_bp=100),
                   other_org_models)
    assert "not a registered model" in err.message


def test_action_to_json_is_the_canonical_body():
    for body, expected in GOOD_BODIES:
        assert parse_traffic_action(expected.to_json()) == expected


# --- desired state -------------------------------------------------------------------------

def desired(*challengers: tuple[str, float], shadow_mode: bool = False, **extra) -> dict:
    return {"champion": CHAMPION, "shadow_mode": shadow_mode,
            "challengers": [{"model_id": m, "traffic_pct": p} for m, p in challengers], **extra}


def test_apply_keeps_ids_by_model_adds_new_ones_and_deactivates_absent_ones():
    state = parse_desired_state(desired((MODEL_C, 12.5), (MODEL_D, 7), shadow_mode=True, deployment="dep_xK8m"),
                                "dep_xK8m")
    result = apply_desired_state(CURRENT, state, MODELS)
    by_id = {c.id: c for c in result.challengers}
    assert by_id[ACTIVE_B.id] == Challenger(ACTIVE_B.id, MODEL_B, 1000, False)
    assert by_id[ACTIVE_C.id] == Challenger(ACTIVE_C.id, MODEL_C, 1250, True)
    assert by_id[REMOVED_D.id] == REMOVED_D
    new = [c for c in result.active_challengers if c.id not in {x.id for x in CURRENT.challengers}]
    assert [(c.model_id, c.traffic_bp) for c in new] == [(MODEL_D, 700)]
    assert result.shadow_mode and result.challenger_bp == 1950


def test_apply_twice_changes_nothing_the_second_time():
    state = parse_desired_state(desired((MODEL_B, 5), (MODEL_D, 20)), "dep_xK8m")
    once = apply_desired_state(CURRENT, state, MODELS)
    assert apply_desired_state(once, state, MODELS) == once


def test_apply_of_the_current_state_is_a_no_op():
    state = parse_desired_state(desired((MODEL_B, 10), (MODEL_C, 30)), "dep_xK8m")
    assert apply_desired_state(CURRENT, state, MODELS) == CURRENT


def test_apply_of_null_challengers_removes_them_all():
    result = apply_desired_state(CURRENT, parse_desired_state({**desired(), "challengers": None}, "dep_xK8m"), MODELS)
    assert result.active_challengers == () and len(result.challengers) == 3


BAD_DESIRED = [
    (desired(deployment="dep_other"), "deployment", "does not match"),
    ({"shadow_mode": False, "challengers": []}, "champion", "needs"),
    ({"champion": CHAMPION, "challengers": []}, "shadow_mode", "needs"),
    ({"champion": CHAMPION, "shadow_mode": False}, "challengers", "needs"),
    (desired(shadow_mode="no"), "shadow_mode", "boolean"),
    ({**desired(), "challengers": {"model_id": MODEL_B}}, "challengers", "list"),
    ({**desired(), "challengers": ["mod_bbbb"]}, "challengers[0]", "object"),
    ({**desired(), "challengers": [{"model_id": MODEL_B}]}, "challengers[0]", "traffic_pct"),
    ({**desired(), "challengers": [{"model_id": MODEL_B, "traffic_pct": 5, "id": "ch_x"}]}, "challengers[0].id",
     "unknown field"),
    (desired((MODEL_B, "5")), "challengers[0].traffic_pct", "string"),
    (desired((MODEL_B, 10), (MODEL_C, 0.5)), "challengers[1].traffic_pct", "1 to 50"),
    (desired((MODEL_B, 10.125)), "challengers[0].traffic_pct", "two decimals"),
    (desired((MODEL_B, 10), (MODEL_B, 5)), "challengers[1].model_id", "twice"),
    (desired((CHAMPION, 10)), "challengers[0].model_id", "champion"),
    (desired((MODEL_B, 30), (MODEL_C, 20.01)), "challengers", "50.01 %"),
    ({**desired(), "champoin": CHAMPION}, "champoin", "did you mean 'champion'"),
]


@pytest.mark.parametrize("body,field,words", BAD_DESIRED)
def test_bad_desired_states_are_422_naming_the_field(body, field, words):
    err = rejected(parse_desired_state, body, "dep_xK8m")
    assert err.code == "invalid_traffic_config"
    assert field in err.message and words in err.message


@pytest.mark.parametrize("body,field,words", [
    ({**desired(), "champion": MODEL_B}, "champion", "not the champion"),
    (desired((UNREGISTERED, 10)), "challengers[0].model_id", "not a registered model"),
])
def test_desired_states_that_break_a_rule_of_the_current_state_are_422(body, field, words):
    err = rejected(apply_desired_state, CURRENT, parse_desired_state(body, "dep_xK8m"), MODELS)
    assert err.code == "invalid_traffic_config"
    assert field in err.message and words in err.message


# --- rollback ------------------------------------------------------------------------------

def test_rollback_restores_the_target_and_keeps_later_challengers_inactive():
    target = deployment(ACTIVE_B, shadow_mode=True)
    later_e = Challenger("ch_eee444", MODEL_D, 500, True)
    current = deployment(Challenger(ACTIVE_B.id, MODEL_B, 2500, True), later_e)
    result = rollback_to(current, target)
    assert result.challengers == (ACTIVE_B, Challenger("ch_eee444", MODEL_D, 500, False))
    assert result.shadow_mode and result.cache_version == current.cache_version


def test_rollback_to_an_equal_config_is_a_no_op():
    assert rollback_to(CURRENT, CURRENT) == CURRENT


def test_rollback_restores_the_champion_of_the_target_version():
    promoted, _ = apply_traffic_action(CURRENT, TrafficAction("promote_challenger", challenger_id=ACTIVE_C.id), MODELS)
    rolled = rollback_to(promoted, CURRENT, MODELS)
    assert rolled.champion_model_id == CHAMPION and rolled.challengers == CURRENT.challengers
    # ch_c takes 3,000 of the champion's slots back (its old ones, the champion's highest), no more
    assert moved_slots(promoted.allocation, rolled.allocation) == 3000
    assert rolled.allocation == CURRENT.allocation


def test_rollback_to_a_champion_no_longer_registered_is_refused():
    target = Deployment("dep_xK8m", "org_1", UNREGISTERED)
    err = rejected(rollback_to, CURRENT, target, MODELS)
    assert err.code == "invalid_traffic_config" and UNREGISTERED in err.message and "registered" in err.message


# --- promote_challenger and the allocation -------------------------------------------------

def test_promote_makes_the_challengers_model_champion_and_drops_the_old_champion():
    result, touched = apply_traffic_action(CURRENT, parse_traffic_action(
        {"action": "promote_challenger", "challenger_id": ACTIVE_C.id}), MODELS)
    assert result.champion_model_id == MODEL_C
    assert touched == Challenger(ACTIVE_C.id, MODEL_C, 3000, False)
    assert result.challengers == (ACTIVE_B, touched, REMOVED_D)  # the old champion is no challenger
    # CURRENT's allocation (laid out champion first): champion 0-6000, ch_b 6000-7000, ch_c 7000-10000;
    # ch_c's slots become the champion's, every other slot keeps its owner.
    assert CURRENT.allocation == (SlotRange("champion", 0, 6000), SlotRange(ACTIVE_B.id, 6000, 7000),
                                  SlotRange(ACTIVE_C.id, 7000, 10000))
    assert result.allocation == (SlotRange("champion", 0, 6000), SlotRange(ACTIVE_B.id, 6000, 7000),
                                 SlotRange("champion", 7000, 10000))


@pytest.mark.parametrize("body, words", [
    ({"action": "promote_challenger", "challenger_id": REMOVED_D.id}, "was removed"),
    ({"action": "promote_challenger", "challenger_id": "ch_nosuch"}, "not a challenger"),
    ({"action": "promote_challenger"}, "needs challenger_id"),
    ({"action": "promote_challenger", "challenger_id": ACTIVE_B.id, "traffic_pct": 5}, "does not take traffic_pct"),
])
def test_bad_promotions_are_422_naming_the_field(body, words):
    err = rejected(lambda: apply_traffic_action(CURRENT, parse_traffic_action(body), MODELS))
    assert err.code == "invalid_traffic_config" and words in err.message


def test_every_action_moves_only_the_slots_whose_owner_must_change():
    def moved(before, after):
        return moved_slots(before.allocation, after.allocation)

    def act(deployment, **body):
        return apply_traffic_action(deployment, parse_traffic_action(body), MODELS)[0]

    grown = act(CURRENT, action="update_traffic", challenger_id=ACTIVE_B.id, traffic_pct=20)
    assert moved(CURRENT, grown) == 1000 and slot_counts(grown.allocation)[ACTIVE_C.id] == 3000
    added = act(CURRENT, action="add_challenger", model_id=MODEL_D, traffic_pct=5.5)
    assert moved(CURRENT, added) == 550
    removed = act(CURRENT, action="remove_challenger", challenger_id=ACTIVE_C.id)
    assert moved(CURRENT, removed) == 3000
    shadow = act(CURRENT, action="toggle_shadow", shadow_mode=True)
    assert shadow.allocation == CURRENT.allocation
    applied = apply_desired_state(CURRENT, parse_desired_state(
        {"champion": CHAMPION, "shadow_mode": False, "challengers": [{"model_id": MODEL_C, "traffic_pct": 25}]},
        "dep_xK8m"), MODELS)
    assert moved(CURRENT, applied) == 1000 + 500  # ch_b's 10 % back, ch_c gives 5 %


def test_rollback_refuses_a_target_over_the_limit():
    target = deployment(Challenger("ch_x1", MODEL_B, 3000), Challenger("ch_x2", MODEL_C, 3000))
    err = rejected(rollback_to, CURRENT, target)
    assert err.code == "invalid_traffic_config" and "to_version" in err.message


@pytest.mark.parametrize("body,expected", [({"to_version": 3}, 3), ({"to_version": 3.0}, 3), ({"to_version": 1}, 1)])
def test_parse_rollback(body, expected):
    assert parse_rollback(body) == expected


@pytest.mark.parametrize("body,words", [
    ({}, "required"), ({"to_version": 0}, "positive"), ({"to_version": -2}, "positive"),
    ({"to_version": 2.5}, "positive integer"), ({"to_version": "3"}, "string"), ({"to_version": True}, "boolean"),
    ({"to_version": math.nan}, "positive integer"), ({"to_version": 2.0**60}, "up to"),
    ({"to_version": 3, "force": True}, "unknown field"),
])
def test_bad_rollback_bodies(body, words):
    err = rejected(parse_rollback, body)
    assert err.code == "invalid_request"
    assert words in err.message and ("to_version" in err.message or "force" in err.message)


# --- models and deployments ----------------------------------------------------------------

def test_model_registration_generates_an_id_in_the_callers_org():
    model = parse_model_registration({"endpoint": "127.0.0.1:9001", "model_name": "iris-b"}, "org_1")
    assert actions.is_valid_id(model.model_id, "mod_") and len(model.model_id) == len("mod_") + 8
    assert (model.endpoint, model.model_name, model.model_version, model.org_id) == ("127.0.0.1:9001", "iris-b", "", "org_1")


def test_model_registration_with_an_id_and_version():
    body = {"endpoint": "models.internal:8001", "model_name": "iris", "model_version": "3", "model_id": "mod_nY5kT2Wq"}
    assert parse_model_registration(body, "org_9") == Model("mod_nY5kT2Wq", "models.internal:8001", "iris", "3", "org_9")


@pytest.mark.parametrize("endpoint", [
    "127.0.0.1:9001", "localhost:1", "triton-0.triton.svc.cluster.local:8001", "[::1]:65535",
    "[2001:db8::7]:443", "host_with_underscore:80", "example.com.:8001",
])
def test_good_endpoints(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint,words", [
    ("127.0.0.1", "host:port"), (":9001", "host:port"), ("localhost:0", "port"), ("localhost:65536", "port"),
    ("localhost:http", "port"), ("localhost:-1", "port"), ("::1:9001", "brackets"), ("[::g]:9001", "invalid host"),
    ("999.1.1.1:80", "invalid host"), ("bad host:80", "invalid host"), ("-lead.example:80", "invalid host"),
    ("http://127.0.0.1:9001", "invalid host"), ("dns:///svc:80", "invalid host"), ("a..b:80", "invalid host"),
    (9001, "string"), (None, "string"),
])
def test_bad_endpoints_are_invalid_request(endpoint, words):
    err = rejected(check_endpoint, endpoint)
    assert err.code == "invalid_request" and "endpoint" in err.message and words in err.message


@pytest.mark.parametrize("body,field,words", [
    ({"model_name": "iris"}, "endpoint", "required"),
    ({"endpoint": "127.0.0.1:9001"}, "model_name", "required"),
    ({"endpoint": "127.0.0.1:9001", "model_name": ""}, "model_name", "empty"),
    ({"endpoint": "127.0.0.1:9001", "model_name": 5}, "model_name", "string"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "a\nb"}, "model_name", "control"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "x" * 300}, "model_name", "longer"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "iris", "model_version": 1}, "model_version", "string"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "iris", "model_id": "model_1"}, "model_id", "mod_"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "iris", "modle_id": "mod_a"}, "modle_id", "did you mean 'model_id'"),
    ({"endpoint": "127.0.0.1:9001", "model_name": "iris", "org_id": "org_2"}, "org_id", "unknown field"),
])
def test_bad_model_bodies_are_invalid_request(body, field, words):
    err = rejected(parse_model_registration, body, "org_1")
    assert err.code == "invalid_request" and field in err.message and words in err.message


def test_deployment_creation():
    assert parse_deployment_creation({"champion_model_id": "mod_a1b2c3d4"}) == (None, "mod_a1b2c3d4")
    assert parse_deployment_creation({"champion_model_id": "mod_a", "deployment_id": "dep_xK8m"}) == ("dep_xK8m", "mod_a")
    assert parse_deployment_creation({"champion_model_id": "mod_a", "deployment_id": None}) == (None, "mod_a")


@pytest.mark.parametrize("body,field,words", [
    ({}, "champion_model_id", "required"),
    ({"champion_model_id": 3}, "champion_model_id", "string"),
    ({"champion_model_id": "mod_a", "deployment_id": "xK8m"}, "deployment_id", "dep_"),
    ({"champion_model_id": "mod_a", "deployment_id": "dep_a/b"}, "deployment_id", "dep_"),
    ({"champion_model_id": "mod_a", "deployment_id": "dep_"}, "deployment_id", "dep_"),
    ({"champion_model_id": "mod_a", "challengers": []}, "challengers", "unknown field"),
])
def test_bad_deployment_bodies_are_invalid_request(body, field, words):
    err = rejected(parse_deployment_creation, body)
    assert err.code == "invalid_request" and field in err.message and words in err.message


def test_champion_must_be_registered():
    actions.check_champion_registered(CHAMPION, MODELS)
    err = rejected(actions.check_champion_registered, UNREGISTERED, MODELS)
    assert err.code == "invalid_request" and "champion_model_id" in err.message


@pytest.mark.parametrize("slug,ok", [
    ("dep_xK8m", True), ("dep_a-b_c", True), ("dep_" + "a" * 64, True), ("dep_" + "a" * 65, False),
    ("dep_", False), ("dep_a.b", False), ("dep_a/b", False), ("DEP_a", False), ("dep_ä", False),
])
def test_slug_validator(slug, ok):
    assert actions.is_valid_id(slug, "dep_") is ok
    if ok:
        assert check_deployment_id(slug) == slug
    else:
        assert "deployment_id" in rejected(check_deployment_id, slug).message
