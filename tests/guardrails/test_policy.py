"""The guardrail policy's validation (SPEC 5a): defaults, bounds, unknown fields, `{}` removes."""

from __future__ import annotations

import pytest

from controlplane.guardrails.policy import parse_guardrails, set_guardrails
from tsplit.errors import ApiError
from tsplit.resources import Deployment, GuardrailPolicy


def rejected(body, code="invalid_request", **kw) -> str:
    with pytest.raises(ApiError) as info:
        parse_guardrails(body, code, **kw)
    assert info.value.code == code
    return info.value.message


def test_an_empty_body_is_no_policy_and_every_field_has_its_default():
    assert parse_guardrails({}) is None
    assert parse_guardrails(None) is None
    policy = parse_guardrails({"steps": [5, 10, 25, 50]})
    assert policy.to_json() == {"alpha": 0.01, "error_rate": True, "latency_quantile": 0.99, "srm": True,
                                "steps": [5, 10, 25, 50], "step_after_requests": 2000}
    assert parse_guardrails({"alpha": 0.05}).steps_bp == ()


def test_the_full_policy_round_trips_through_the_stored_json():
    body = {"alpha": 0.05, "error_rate": False, "latency_quantile": None, "srm": False,
            "steps": [2.5, 10], "step_after_requests": 1}
    policy = parse_guardrails(body)
    assert policy.to_json() == body
    assert GuardrailPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize("body, field", [
    ({"alpha": 0}, "alpha"), ({"alpha": 0.51}, "alpha"), ({"alpha": "0.01"}, "alpha"), ({"alpha": True}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"latency_quantile": 1}, "latency_quantile"), ({"latency_quantile": 0}, "latency_quantile"),
    ({"error_rate": 1}, "error_rate"), ({"srm": "yes"}, "srm"),
    ({"steps": [10, 5]}, "steps"), ({"steps": [5, 5]}, "steps"), ({"steps": [0.5]}, "steps[0]"),
    ({"steps": [51]}, "steps[0]"), ({"steps": [5, 10.001]}, "steps[1]"), ({"steps": 5}, "steps"),
    ({"step_after_requests": 0}, "step_after_requests"), ({"step_after_requests": 1.5}, "step_after_requests"),
    ({"alpah": 0.01}, "alpah"),
])
def test_a_bad_field_is_named(body, field):
    assert field in rejected(body)


def test_unknown_fields_get_a_suggestion_and_the_route_code():
    assert "did you mean 'alpha'" in rejected({"alpah": 0.01}, "invalid_traffic_config", where="guardrails.")
    assert "guardrails.alpah" in rejected({"alpah": 0.01}, "invalid_traffic_config", where="guardrails.")
    assert "guardrails must be an object" in rejected([1], "invalid_traffic_config", where="guardrails.")


def test_setting_the_same_policy_changes_nothing_and_json_leaves_guardrails_out_when_none():
    deployment = Deployment("dep_x", "org_1", "mod_a")
    assert "guardrails" not in deployment.to_json()
    policy = parse_guardrails({"steps": [5, 10]})
    with_policy, _ = set_guardrails(deployment, policy)
    assert with_policy.to_json()["guardrails"]["steps"] == [5, 10]
    assert Deployment.from_json(with_policy.to_json()) == with_policy
    assert set_guardrails(with_policy, parse_guardrails({"steps": [5, 10]}))[0] == with_policy
    assert set_guardrails(with_policy, None)[0] == deployment


def test_next_step_is_the_first_above_the_current_share():
    policy = parse_guardrails({"steps": [5, 10, 25]})
    assert policy.next_step_bp(100) == 500
    assert policy.next_step_bp(500) == 1000
    assert policy.next_step_bp(700) == 1000
    assert policy.next_step_bp(2500) is None
