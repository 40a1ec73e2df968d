"""JSON <-> protobuf for the gateway, the control plane and the CLI: request bodies
become Structs, answers become JSON.

google.protobuf.json_format is not used on purpose: it writes int64 as strings, refuses
NaN inside a Struct and turns every Struct number into a float. Here a JSON number that
is integral comes back as an int (``traffic_pct`` 10, not 10.0), and shares are rounded
to the basis points the control plane works in.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tsplit.resources import pct_to_bp, pct_to_json

# Integers beyond 2**53 are not exact in a double; past it a number stays a float.
_MAX_EXACT_INT = 2**53
_PCT_FIELDS = frozenset({"traffic_pct"})
# Left out of the JSON when unset, as in the etcd values: a deployment's guardrail policy,
# a history entry's evidence, a DeploymentChange's created (set only when apply created it).
ABSENT_WHEN_UNSET = frozenset({"guardrails", "evidence", "created"})


def json_number(value: float) -> int | float | None:
    """A double as JSON shows it: integral -> int, non-finite -> null (JSON has no NaN)."""
    if not math.isfinite(value):
        return None
    if value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    return value


def pct_json(value: float) -> int | float | None:
    """A traffic share as JSON shows it: 10.0 -> 10, 12.340000001 -> 12.34."""
    if not math.isfinite(value):
        return None
    return pct_to_json(pct_to_bp(value))


def _to_double(value: int | float) -> float:
    # A JSON integer too large for a double passes on as +-inf: the control plane rejects
    # it with the same message as any other out-of-range number.
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def value_from_json(value: Any) -> struct_pb2.Value:
    """A parsed JSON value (dict, list, str, number, bool, None) as a protobuf Value."""
    out = struct_pb2.Value()
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, (int, float)):
        out.number_value = _to_double(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, dict):
        out.struct_value.CopyFrom(struct_from_json(value))
    elif isinstance(value, list):
        out.list_value.values.extend(value_from_json(v) for v in value)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
    return out


def struct_from_json(obj: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key, value in obj.items():
        out.fields[key].CopyFrom(value_from_json(value))
    return out


def value_to_json(value: struct_pb2.Value, keep_non_finite: bool = False) -> Any:
    """keep_non_finite: NaN and infinities stay floats (the control plane reads request
    bodies this way, so its validator can name them) instead of becoming null."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if keep_non_finite and not math.isfinite(number):
            return number
        return json_number(number)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_json(value.struct_value, keep_non_finite)
    if kind == "list_value":
        return [value_to_json(v, keep_non_finite) for v in value.list_value.values]
    return None


def struct_to_json(struct: struct_pb2.Struct, keep_non_finite: bool = False) -> dict[str, Any]:
    return {key: value_to_json(value, keep_non_finite) for key, value in struct.fields.items()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


_NULL, _ABSENT = "null", "absent"  # what an unset field with presence shows as
# A message type's plan: per field (name, repeated, unset, convert); unset is None for a
# field without presence, convert None where the value is already what JSON shows (strings,
# bools, integers). Made once per type: a list of 10,000 deployments no longer pays for the
# descriptor walk on every message (1.1 s -> 0.3 s here).
_Plan = list[tuple[str, bool, str | None, Any]]
_PLANS: dict[str, _Plan] = {}


def _plan(descriptor) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        plan = []
        for field in descriptor.fields:
            convert: Any = None
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                convert = struct_to_json if field.message_type.full_name == "google.protobuf.Struct" else message_to_json
            elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                convert = pct_json if field.name in _PCT_FIELDS else _finite
            unset = None
            if not field.is_repeated and field.has_presence:
                unset = _ABSENT if field.name in ABSENT_WHEN_UNSET else _NULL
            plan.append((field.name, field.is_repeated, unset, convert))
        _PLANS[descriptor.full_name] = plan
    return plan


def message_to_json(message: Message) -> dict[str, Any]:
    """Every field of a control-plane message by its proto name; an unset optional is null."""
    out: dict[str, Any] = {}
    for name, repeated, unset, convert in _plan(message.DESCRIPTOR):
        if repeated:
            values = getattr(message, name)
            out[name] = [convert(v) for v in values] if convert else list(values)
        elif unset is not None and not message.HasField(name):
            if unset is _NULL:
                out[name] = None
        else:
            value = getattr(message, name)
            out[name] = convert(value) if convert else value
    return out


def traffic_change_to_json(response: Message) -> dict[str, Any]:
    """A ManageTrafficResponse in the seed page's shape: the challenger the action touched,
    or ``shadow_mode`` for toggle_shadow; promote_challenger adds ``champion_model_id``."""
    out: dict[str, Any] = {"deployment_id": response.deployment_id, "action": response.action}
    if response.action == "toggle_shadow":
        out["shadow_mode"] = response.shadow_mode
    else:
        out["challenger"] = message_to_json(response.challenger)
    if response.action == "promote_challenger":
        out["champion_model_id"] = response.champion_model_id
    out["cache_version"] = response.cache_version
    return out
