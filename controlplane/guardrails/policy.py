"""The guardrail policy of a deployment (SPEC 5a): parsed and validated here, stored in the
deployment's config as `guardrails` (tsplit.resources.GuardrailPolicy).

Pure, no I/O. `{}` (or null in a desired state) means no policy. Every rejection is an
ApiError whose message names the field; the code is the route's (invalid_request for
PUT .../guardrails, invalid_traffic_config inside a desired state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from controlplane.actions import (
    REQUEST_ERROR, _kind, _show_number, json_object, pct_to_basis_points, positive_int, reject_unknown_fields,
)
from tsplit.errors import ApiError
from tsplit.resources import Challenger, Deployment, GuardrailPolicy

POLICY_FIELDS = ("alpha", "error_rate", "latency_quantile", "srm", "steps", "step_after_requests")
MAX_STEPS = 20


def _unit_interval(value: Any, field: str, code: str, *, low_open: bool, high: float, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(code, f"{field} must be a number, got {_kind(value)}")
    above = value > 0 if low_open else value >= 0
    below = value < high if high_open else value <= high
    if not (above and below):
        bounds = f"{'(' if low_open else '['}0, {high:g}{')' if high_open else ']'}"
        raise ApiError(code, f"{field} must be in {bounds}, got {_show_number(value)}")
    return float(value)


def _bool(value: Any, field: str, code: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(code, f"{field} must be a boolean (true or false), got {_kind(value)}")
    return value


def _steps(value: Any, field: str, code: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ApiError(code, f"{field} must be a list of traffic_pct values (1 to 50), got {_kind(value)}")
    if len(value) > MAX_STEPS:
        raise ApiError(code, f"{field} has {len(value)} steps; at most {MAX_STEPS}")
    steps = tuple(pct_to_basis_points(step, f"{field}[{i}]", code) for i, step in enumerate(value))
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ApiError(code, f"{field} must increase: {field}[{i}] is not above {field}[{i - 1}]")
    return steps


def parse_guardrails(body: Any, code: str = REQUEST_ERROR, where: str = "") -> GuardrailPolicy | None:
    """The policy a body describes; None for `{}` (or null): no guardrails."""
    if body is None:
        return None
    if where and not isinstance(body, Mapping):
        raise ApiError(code, f"{where.rstrip('.')} must be an object (the guardrail policy), got {_kind(body)}")
    body = json_object(body)
    reject_unknown_fields(body, POLICY_FIELDS, code, where=where)
    if not body:
        return None
    policy = GuardrailPolicy()
    if "alpha" in body:
        policy = replace(policy, alpha=_unit_interval(
            body["alpha"], f"{where}alpha", code, low_open=True, high=0.5, high_open=False))
    if "error_rate" in body:
        policy = replace(policy, error_rate=_bool(body["error_rate"], f"{where}error_rate", code))
    if "latency_quantile" in body:
        quantile = body["latency_quantile"]
        policy = replace(policy, latency_quantile=None if quantile is None else _unit_interval(
            quantile, f"{where}latency_quantile", code, low_open=True, high=1.0, high_open=True))
    if "srm" in body:
        policy = replace(policy, srm=_bool(body["srm"], f"{where}srm", code))
    if "steps" in body:
        policy = replace(policy, steps_bp=_steps(body["steps"], f"{where}steps", code))
    if "step_after_requests" in body:
        policy = replace(policy, step_after_requests=positive_int(
            body["step_after_requests"], f"{where}step_after_requests", code))
    return policy


def set_guardrails(deployment: Deployment, policy: GuardrailPolicy | None) -> tuple[Deployment, Challenger | None]:
    """The set_guardrails change: the deployment with this policy (equal to the input when
    the policy is the one it has, so nothing is written)."""
    return replace(deployment, guardrails=policy), None
