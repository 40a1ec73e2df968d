"""JSON <-> protobuf conversion of the gateway: unit and property tests (no servers)."""

from __future__ import annotations

import math

from hypothesis import given, strategies as st

from tsplit.protojson import (
    json_number, message_to_json, pct_json, struct_from_json, struct_to_json, traffic_change_to_json)
from tsplit.v1 import controlplane_pb2 as pb

# JSON as the gateway passes it on: integers within the exact range of a double.
json_scalars = st.none() | st.booleans() | st.text(max_size=10) | st.integers(-2**53, 2**53) | \
    st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _same(a, b) -> bool:
    """Equal as JSON, and an integer stays an integer (10 is not 10.0)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and a.is_integer() and abs(a) <= 2**53:
        return b == a and isinstance(b, int)  # integral floats come back as ints by design
    return a == b and type(a) is type(b)


@given(json_objects)
def test_struct_round_trip_keeps_every_value_and_ints_stay_ints(obj):
    back = struct_to_json(struct_from_json(obj))
    assert _same(obj, back), (obj, back)


def test_nan_and_infinity_pass_into_the_struct_for_the_control_plane_to_judge():
    struct = struct_from_json({"traffic_pct": float("nan"), "big": 10**400, "neg": -10**400, "inf": float("inf")})
    assert math.isnan(struct.fields["traffic_pct"].number_value)
    assert struct.fields["big"].number_value == math.inf
    assert struct.fields["neg"].number_value == -math.inf
    # JSON cannot carry them back: they show as null.
    assert struct_to_json(struct) == {"traffic_pct": None, "big": None, "neg": None, "inf": None}


def test_booleans_are_not_numbers_in_the_struct():
    struct = struct_from_json({"shadow_mode": True, "traffic_pct": 1})
    assert struct.fields["shadow_mode"].WhichOneof("kind") == "bool_value"
    assert struct.fields["traffic_pct"].WhichOneof("kind") == "number_value"


@given(st.integers(100, 5000))
def test_pct_json_shows_basis_points_as_percent(bp):
    shown = pct_json(bp / 100)
    assert shown == bp / 100
    assert isinstance(shown, int) == (bp % 100 == 0)


def test_json_number_integral_to_int_and_non_finite_to_null():
    assert json_number(10.0) == 10 and isinstance(json_number(10.0), int)
    assert json_number(0.25) == 0.25
    assert json_number(float(2**60)) == float(2**60) and isinstance(json_number(float(2**60)), float)
    assert json_number(float("nan")) is None and json_number(float("-inf")) is None


def test_deployment_message_becomes_the_spec_resource_json():
    deployment = pb.Deployment(
        deployment_id="dep_xK8m", org_id="org_1", champion_model_id="mod_a1b2c3d4",
        challengers=[pb.Challenger(id="ch_abc123", model_id="mod_nY5kT2Wq", traffic_pct=10.0, is_active=True),
                     pb.Challenger(id="ch_def456", model_id="mod_zzzzzzzz", traffic_pct=12.34, is_active=False)],
        cache_version=4, updated_at="2026-11-22T13:00:00Z", updated_by="user-1",
        allocation=[pb.SlotRange(variant="champion", start=0, end=9000),
                    pb.SlotRange(variant="ch_abc123", start=9000, end=10000)])
    out = message_to_json(deployment)
    assert out == {
        "deployment_id": "dep_xK8m", "org_id": "org_1", "champion_model_id": "mod_a1b2c3d4",
        "challengers": [{"id": "ch_abc123", "model_id": "mod_nY5kT2Wq", "traffic_pct": 10, "is_active": True},
                        {"id": "ch_def456", "model_id": "mod_zzzzzzzz", "traffic_pct": 12.34, "is_active": False}],
        "shadow_mode": False, "cache_version": 4, "updated_at": "2026-11-22T13:00:00Z", "updated_by": "user-1",
        "allocation": [{"variant": "champion", "start": 0, "end": 9000},
                       {"variant": "ch_abc123", "start": 9000, "end": 10000}]}
    assert isinstance(out["challengers"][0]["traffic_pct"], int) and isinstance(out["cache_version"], int)


def test_unset_optional_fields_are_null_and_set_ones_are_numbers():
    stats = message_to_json(pb.VariantStats(variant="champion", traffic_pct=90.0, avg_latency_ms=0.0))
    assert stats["label_agreement"] is None and stats["exact_match_rate"] is None
    assert stats["traffic_pct"] == 90 and isinstance(stats["traffic_pct"], int)
    assert stats["avg_latency_ms"] == 0.0
    assert message_to_json(pb.VariantStats(label_agreement=0.75))["label_agreement"] == 0.75


def test_history_entry_request_body_comes_back_as_json():
    entry = pb.HistoryEntry(cache_version=2, action="add_challenger",
                            request=struct_from_json({"action": "add_challenger", "traffic_pct": 10}))
    out = message_to_json(entry)
    assert out["request"] == {"action": "add_challenger", "traffic_pct": 10}
    assert isinstance(out["request"]["traffic_pct"], int)
    assert out["config"] is None  # an unset message field is null, like an unset optional


def test_traffic_change_has_the_seed_shape():
    answer = pb.ManageTrafficResponse(
        deployment_id="dep_xK8m", action="add_challenger", cache_version=4, changed=True,
        challenger=pb.Challenger(id="ch_abc123", model_id="mod_nY5kT2Wq", traffic_pct=10.0, is_active=True),
        deployment=pb.Deployment(deployment_id="dep_xK8m"))
    out = traffic_change_to_json(answer)
    assert list(out) == ["deployment_id", "action", "challenger", "cache_version"]
    assert out["challenger"] == {"id": "ch_abc123", "model_id": "mod_nY5kT2Wq", "traffic_pct": 10, "is_active": True}

    shadow = traffic_change_to_json(pb.ManageTrafficResponse(
        deployment_id="dep_xK8m", action="toggle_shadow", shadow_mode=True, cache_version=5))
    assert shadow == {"deployment_id": "dep_xK8m", "action": "toggle_shadow", "shadow_mode": True, "cache_version": 5}
