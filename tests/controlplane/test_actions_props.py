"""Property tests of the validation core: invariants no sequence of requests can break."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.actions import (
    TrafficAction, apply_desired_state, apply_traffic_action, parse_deployment_creation, parse_desired_state,
    parse_model_registration, parse_rollback, parse_traffic_action, pct_to_basis_points, rollback_to,
)
from tsplit.errors import ApiError
from tsplit.resources import Deployment, Model

CHAMPION = "mod_champ"
POOL = ("mod_m0", "mod_m1", "mod_m2", "mod_m3", "mod_m4", "mod_m5")
MODELS = {m: Model(m, "127.0.0.1:9001", m) for m in (CHAMPION, *POOL)}
START = Deployment("dep_prop", "org_1", CHAMPION)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Shares as a client sends them: whole numbers, two decimals (some with float error when
# times 100), three decimals, out of range, and values of the wrong type.
two_decimal_pcts = st.integers(100, 5000).map(lambda bp: bp / 100)
pcts = st.one_of(
    st.integers(1, 50), two_decimal_pcts, st.integers(1, 50).map(float),
    st.integers(1000, 50000).map(lambda n: n / 1000),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["10", True, None, 0, 51, 0.5, 50.01]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 100), st.floats(), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def existing_or_made_up_challenger(data, deployment: Deployment) -> str:
    ids = [c.id for c in deployment.challengers] + ["ch_nosuch"]
    return data.draw(st.sampled_from(ids))


def draw_action_body(data, deployment: Deployment) -> dict:
    action = data.draw(st.sampled_from(["add_challenger", "remove_challenger", "update_traffic", "toggle_shadow",
                                        "promote_challenger"]))
    if action == "add_challenger":
        model = data.draw(st.sampled_from((*POOL, CHAMPION, "mod_unregistered")))
        return {"action": action, "model_id": model, "traffic_pct": data.draw(pcts)}
    if action in ("remove_challenger", "promote_challenger"):
        return {"action": action, "challenger_id": existing_or_made_up_challenger(data, deployment)}
    if action == "update_traffic":
        return {"action": action, "challenger_id": existing_or_made_up_challenger(data, deployment),
                "traffic_pct": data.draw(pcts)}
    return {"action": action, "shadow_mode": data.draw(st.booleans())}


def valid_pct_bp(value) -> int | None:
    """SPEC section 3's rule for traffic_pct, written out on its own: the basis points of a
    JSON number from 1 to 50 with at most two decimals, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    if not 1 <= value <= 50:
        return None
    exact = Decimal(repr(value)) * 100
    return int(exact) if exact == exact.to_integral_value() else None


def should_accept(deployment: Deployment, body: dict) -> bool:
    """Whether SPEC section 3 says the action is accepted on deployment (the oracle the
    validator is checked against both ways: a validator refusing everything fails too)."""
    active = {c.id: c for c in deployment.active_challengers}
    action = body["action"]
    if action == "toggle_shadow":
        return True
    if action in ("remove_challenger", "promote_challenger"):
        return body["challenger_id"] in active  # every model here is registered
    bp = valid_pct_bp(body["traffic_pct"])
    if bp is None:
        return False
    if action == "add_challenger":
        model = body["model_id"]
        return (model in MODELS and model != deployment.champion_model_id  # after a promotion mod_champ is one
                and model not in {c.model_id for c in active.values()}
                and deployment.challenger_bp + bp <= 5000)
    challenger = active.get(body["challenger_id"])
    return challenger is not None and deployment.challenger_bp - challenger.traffic_bp + bp <= 5000


def take(deployment: Deployment, body: dict) -> tuple[Deployment, TrafficAction | None]:
    """The deployment after `body` if it was accepted (and the parsed action), else unchanged;
    accepted exactly when the oracle says so."""
    expected = should_accept(deployment, body)
    try:
        action = parse_traffic_action(body)
        after = apply_traffic_action(deployment, action, MODELS)[0]
    except ApiError as err:
        assert err.code == "invalid_traffic_config", err
        assert not expected, f"refused a valid action {body}: {err.message}"
        return deployment, None
    assert expected, f"accepted an invalid action {body}"
    return after, action


def assert_invariants(before: Deployment, after: Deployment) -> None:
    assert after.challenger_bp <= 5000
    active = after.active_challengers
    assert all(100 <= c.traffic_bp <= 5000 for c in active)
    assert len({c.model_id for c in active}) == len(active)
    assert after.champion_model_id not in {c.model_id for c in active}
    assert len({c.id for c in after.challengers}) == len(after.challengers)
    assert_allocation_moved_minimally(before, after)
    # the history of challengers only grows: removed ones stay, listed where they were
    assert [c.id for c in after.challengers[:len(before.challengers)]] == [c.id for c in before.challengers]


def owner_changes(before: Deployment, after: Deployment) -> list[tuple[str, str, int]]:
    """(owner before, owner after, slots) for every stretch of slots whose owner changed."""
    edges = sorted({r.start for r in before.allocation} | {r.start for r in after.allocation})
    def owner(allocation, slot):
        return next(r.variant for r in allocation if r.start <= slot < r.end)
    changes = []
    for start, end in zip(edges, edges[1:] + [10_000]):
        a, b = owner(before.allocation, start), owner(after.allocation, start)
        if a != b:
            changes.append((a, b, end - start))
    return changes


def assert_allocation_moved_minimally(before: Deployment, after: Deployment) -> None:
    """Each active challenger owns exactly its basis points, and only the slots whose owner
    must change moved, each to or from the champion."""
    counts = Counter()
    for r in after.allocation:
        counts[r.variant] += r.end - r.start
    assert {v: n for v, n in counts.items() if v != "champion"} == {c.id: c.traffic_bp for c in after.active_challengers}
    changes = owner_changes(before, after)
    held, wanted = before.slot_weights(), after.slot_weights()
    assert sum(n for _, _, n in changes) == sum(abs(wanted.get(c, 0) - held.get(c, 0)) for c in set(held) | set(wanted))
    assert all("champion" in (a, b) for a, b, _ in changes)


def run_actions(data, deployment: Deployment, steps: int) -> Deployment:
    for _ in range(steps):
        body = draw_action_body(data, deployment)
        after, action = take(deployment, body)
        assert_invariants(deployment, after)
        if action is not None and action.traffic_bp is not None:
            sent = Decimal(repr(body["traffic_pct"]))
            assert sent * 100 == action.traffic_bp  # at most two decimals, converted exactly
        deployment = after
    return deployment


@FAST
@given(st.data(), st.integers(1, 40))
def test_no_sequence_of_accepted_actions_exceeds_50_percent(data, steps):
    run_actions(data, START, steps)


@FAST
@given(st.data(), st.integers(0, 15))
def test_no_op_actions_return_an_equal_deployment(data, steps):
    deployment = run_actions(data, START, steps)
    same_shadow = TrafficAction("toggle_shadow", shadow_mode=deployment.shadow_mode)
    assert apply_traffic_action(deployment, same_shadow, MODELS)[0] == deployment
    for challenger in deployment.active_challengers:
        same_share = TrafficAction("update_traffic", challenger_id=challenger.id, traffic_bp=challenger.traffic_bp)
        assert apply_traffic_action(deployment, same_share, MODELS) == (deployment, challenger)


@FAST
@given(st.integers(100, 5000))
def test_every_two_decimal_share_converts_exactly_even_through_json(bp):
    sent = json.loads(json.dumps({"traffic_pct": bp / 100}))["traffic_pct"]
    assert pct_to_basis_points(sent) == bp


@FAST
@given(st.floats(1, 50))
def test_a_share_is_accepted_exactly_when_it_has_at_most_two_decimals(pct):
    # round(x, 2) == x is an independent oracle: x is the float nearest a two-decimal number.
    has_two_decimals = round(pct, 2) == pct
    try:
        bp = pct_to_basis_points(pct)
    except ApiError as err:
        assert err.code == "invalid_traffic_config" and "two decimals" in err.message and not has_two_decimals
    else:
        assert has_two_decimals and bp == round(pct * 100)


desired_challengers = st.lists(st.tuples(st.sampled_from(POOL), st.integers(100, 2000)), max_size=5,
                               unique_by=lambda t: t[0])


def desired_body(challengers, shadow_mode: bool, champion: str = CHAMPION) -> dict:
    return {"champion": champion, "shadow_mode": shadow_mode,
            "challengers": [{"model_id": m, "traffic_pct": bp / 100} for m, bp in challengers]}


@FAST
@given(st.data(), st.integers(0, 15), desired_challengers, st.booleans())
def test_apply_reaches_the_desired_state_and_is_idempotent(data, steps, challengers, shadow_mode):
    deployment = run_actions(data, START, steps)
    challengers = [(m, bp) for m, bp in challengers if m != deployment.champion_model_id]  # after a promotion
    try:
        state = parse_desired_state(desired_body(challengers, shadow_mode, deployment.champion_model_id), "dep_prop")
    except ApiError as err:
        assert err.code == "invalid_traffic_config" and sum(bp for _, bp in challengers) > 5000
        return
    once = apply_desired_state(deployment, state, MODELS)
    assert_invariants(deployment, once)
    assert {(c.model_id, c.traffic_bp) for c in once.active_challengers} == set(challengers)
    assert once.shadow_mode == shadow_mode
    kept = {c.model_id: c.id for c in deployment.active_challengers}
    assert all(c.id == kept[c.model_id] for c in once.active_challengers if c.model_id in kept)
    assert apply_desired_state(once, state, MODELS) == once


@FAST
@given(st.data(), st.integers(0, 12), st.integers(0, 12))
def test_rollback_round_trip(data, steps_before, steps_after):
    target = run_actions(data, START, steps_before)
    current = run_actions(data, target, steps_after)
    rolled = rollback_to(current, target)
    assert rolled.challengers[:len(target.challengers)] == target.challengers
    assert all(not c.is_active for c in rolled.challengers[len(target.challengers):])
    assert rolled.active_challengers == target.active_challengers
    assert rolled.shadow_mode == target.shadow_mode and rolled.same_traffic(rollback_to(rolled, target))
    assert {c.id for c in rolled.challengers} == {c.id for c in current.challengers}
    assert_invariants(current, rolled)


@FAST
@given(st.dictionaries(st.sampled_from(["action", "model_id", "challenger_id", "traffic_pct", "shadow_mode", "x"]),
                       json_values | st.sampled_from(["add_challenger", "toggle_shadow", "mod_a", "ch_a"])))
def test_any_traffic_body_either_parses_or_is_a_clear_422(body):
    try:
        parse_traffic_action(body)
    except ApiError as err:
        assert err.code == "invalid_traffic_config" and err.message


@FAST
@given(json_values)
def test_other_parsers_answer_only_api_errors_on_any_json(value):
    for parse in (parse_rollback, parse_deployment_creation, lambda b: parse_model_registration(b, "org_1"),
                  lambda b: parse_desired_state(b, "dep_prop")):
        try:
            parse(value)
        except ApiError as err:
            assert err.code in ("invalid_json", "invalid_request", "invalid_traffic_config") and err.message
