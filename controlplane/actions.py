"""The control plane's validation core: request bodies and the traffic rules of SPEC section 3.

Pure, no I/O. `parse_*` checks a body's shape and turns it into a typed value; `apply_*` and
`rollback_to` check it against the deployment's current state and return the new state
(cache_version, updated_at and updated_by are left for the store to set). Every rejection
is an ApiError whose message names the field.

Bodies are JSON objects, often carried by protobuf Struct where every number is a float
(10 arrives as 10.0): integral floats count as integers, booleans never count as numbers.
Traffic shares become integer basis points here, so sums are exact.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from tsplit.errors import ApiError
from tsplit.resources import BP_PER_PCT, Challenger, Deployment, Model, new_id, pct_to_json

TRAFFIC_ERROR = "invalid_traffic_config"
REQUEST_ERROR = "invalid_request"

MIN_PCT, MAX_PCT = 1, 50
MAX_CHALLENGERS_BP = MAX_PCT * BP_PER_PCT  # the sum of active challengers' shares

MODEL_PREFIX, DEPLOYMENT_PREFIX, CHALLENGER_PREFIX = "mod_", "dep_", "ch_"
CHALLENGER_ID_LENGTH = 6
_ID_SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_SAFE_INT = 2**53  # beyond it a float (all Struct numbers are) is no longer exact
_MAX_NAME_LENGTH = 256

ACTION_FIELDS: dict[str, tuple[str, ...]] = {
    "add_challenger": ("model_id", "traffic_pct"),
    "remove_challenger": ("challenger_id",),
    "update_traffic": ("challenger_id", "traffic_pct"),
    "toggle_shadow": ("shadow_mode",),
    "promote_challenger": ("challenger_id",),
}
_ACTION_BODY_FIELDS = ("action", "model_id", "challenger_id", "traffic_pct", "shadow_mode")
_ACTION_NAMES = ", ".join(ACTION_FIELDS)


# --- values -------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    """How a JSON value looks, for messages: never the whole (possibly huge) value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, (int, float)):
        return f"the number {_show_number(value)}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _show_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def json_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiError("invalid_json", f"the body must be a JSON object, got {_kind(body)}")
    return body


def reject_unknown_fields(body: Mapping[str, Any], allowed: Iterable[str], code: str, where: str = "") -> None:
    """A typo such as `trafic_pct` must not pass silently: name it and suggest the field."""
    allowed = tuple(allowed)
    unknown = sorted(str(name) for name in body if name not in allowed)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(allowed)}"
    raise ApiError(code, f"unknown field {_show(where + name)} ({hint})")


def is_valid_id(value: Any, prefix: str) -> bool:
    """True for prefix + 1..64 of [A-Za-z0-9_-], e.g. "dep_xK8m" with prefix "dep_"."""
    return (isinstance(value, str) and value.startswith(prefix)
            and _ID_SUFFIX.fullmatch(value[len(prefix):]) is not None)


def check_id(value: Any, prefix: str, field: str, code: str = REQUEST_ERROR) -> str:
    """The id, or an ApiError naming the field. Also fit for path parameters."""
    if not isinstance(value, str):
        raise ApiError(code, f"{field} must be a string like {prefix}xK8m, got {_kind(value)}")
    if not is_valid_id(value, prefix):
        raise ApiError(code, f"{field} {_show(value)} must be {prefix!r} followed by 1 to 64 "
                             "letters, digits, '_' or '-'")
    return value


def check_deployment_id(value: Any, code: str = REQUEST_ERROR) -> str:
    return check_id(value, DEPLOYMENT_PREFIX, "deployment_id", code)


def _check_bool(value: Any, field: str, code: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(code, f"{field} must be a boolean (true or false), got {_kind(value)}")
    return value


def _check_text(value: Any, field: str, code: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ApiError(code, f"{field} must be a string, got {_kind(value)}")
    if not value and not allow_empty:
        raise ApiError(code, f"{field} must not be empty")
    if len(value) > _MAX_NAME_LENGTH:
        raise ApiError(code, f"{field} is longer than {_MAX_NAME_LENGTH} characters")
    if not value.isprintable():
        raise ApiError(code, f"{field} {_show(value)} contains control characters")
    return value


def positive_int(value: Any, field: str, code: str = REQUEST_ERROR) -> int:
    """A positive integer; 3.0 counts (Struct numbers are floats), 3.5, "3" and true do not."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ApiError(code, f"{field} must be a positive integer, got {_kind(value)}")
    if not 1 <= value <= _MAX_SAFE_INT:
        raise ApiError(code, f"{field} must be a positive integer up to {_MAX_SAFE_INT}, "
                             f"got {_show_number(value)}")
    return int(value)


def pct_to_basis_points(value: Any, field: str = "traffic_pct", code: str = TRAFFIC_ERROR) -> int:
    """A share in percent (1..50, at most two decimals) as basis points: 12.34 -> 1234.

    The decimals are counted on the shortest decimal form of the float (its repr), which is
    the text the client sent, so 0.29 or 12.34 pass although 0.29 * 100 != 29 in floats.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(code, f"{field} must be a number from {MIN_PCT} to {MAX_PCT}, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(code, f"{field} must be a finite number from {MIN_PCT} to {MAX_PCT}, got {value}")
    if not MIN_PCT <= value <= MAX_PCT:
        raise ApiError(code, f"{field} must be from {MIN_PCT} to {MAX_PCT} (percent), "
                             f"got {_show_number(value)}")
    basis_points = Decimal(repr(value)) * BP_PER_PCT
    if basis_points != basis_points.to_integral_value():
        raise ApiError(code, f"{field} takes at most two decimals, got {_show_number(value)}")
    return int(basis_points)


def _format_bp(bp: int) -> str:
    return f"{pct_to_json(bp)} %"


# --- traffic actions (PATCH /v1/deployments/{slug}/traffic) ---------------------------------

@dataclass(frozen=True)
class TrafficAction:
    action: str
    model_id: str | None = None
    challenger_id: str | None = None
    traffic_bp: int | None = None
    shadow_mode: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The canonical body of this action (traffic in percent), for history and logs."""
        body: dict[str, Any] = {"action": self.action}
        if self.model_id is not None:
            body["model_id"] = self.model_id
        if self.challenger_id is not None:
            body["challenger_id"] = self.challenger_id
        if self.traffic_bp is not None:
            body["traffic_pct"] = pct_to_json(self.traffic_bp)
        if self.shadow_mode is not None:
            body["shadow_mode"] = self.shadow_mode
        return body


def parse_traffic_action(body: Mapping[str, Any]) -> TrafficAction:
    body = json_object(body)
    reject_unknown_fields(body, _ACTION_BODY_FIELDS, TRAFFIC_ERROR)
    if "action" not in body:
        raise ApiError(TRAFFIC_ERROR, f"action is required: one of {_ACTION_NAMES}")
    action = body["action"]
    if not isinstance(action, str):
        raise ApiError(TRAFFIC_ERROR, f"action must be a string, one of {_ACTION_NAMES}; got {_kind(action)}")
    needs = ACTION_FIELDS.get(action)
    if needs is None:
        raise ApiError(TRAFFIC_ERROR, f"action {_show(action)} is unknown; use one of {_ACTION_NAMES}")
    for field in body:
        if field != "action" and field not in needs:
            raise ApiError(TRAFFIC_ERROR, f"{action} does not take {field} (it takes {', '.join(needs)})")
    for field in needs:
        if field not in body:
            raise ApiError(TRAFFIC_ERROR, f"{action} needs {field}")
    return TrafficAction(
        action=action,
        model_id=check_id(body["model_id"], MODEL_PREFIX, "model_id", TRAFFIC_ERROR) if "model_id" in needs else None,
        challenger_id=(check_id(body["challenger_id"], CHALLENGER_PREFIX, "challenger_id", TRAFFIC_ERROR)
                       if "challenger_id" in needs else None),
        traffic_bp=pct_to_basis_points(body["traffic_pct"]) if "traffic_pct" in needs else None,
        shadow_mode=_check_bool(body["shadow_mode"], "shadow_mode", TRAFFIC_ERROR) if "shadow_mode" in needs else None,
    )


def _check_registered_challenger_model(model_id: str, deployment: Deployment, models: Mapping[str, Model],
                                       field: str) -> None:
    if model_id not in models:
        raise ApiError(TRAFFIC_ERROR, f"{field} {_show(model_id)} is not a registered model")
    if model_id == deployment.champion_model_id:
        raise ApiError(TRAFFIC_ERROR, f"{field} {_show(model_id)} is the champion of "
                                      f"{deployment.deployment_id}; it cannot also be a challenger")


def _check_total(deployment: Deployment, field: str) -> None:
    if deployment.challenger_bp > MAX_CHALLENGERS_BP:
        raise ApiError(TRAFFIC_ERROR, f"{field}: active challengers would get "
                                      f"{_format_bp(deployment.challenger_bp)} of traffic in total; "
                                      f"the limit is {_format_bp(MAX_CHALLENGERS_BP)}")


def _active_challenger(deployment: Deployment, challenger_id: str) -> Challenger:
    challenger = deployment.challenger(challenger_id)
    if challenger is None:
        raise ApiError(TRAFFIC_ERROR, f"challenger_id {_show(challenger_id)} is not a challenger of "
                                      f"{deployment.deployment_id}")
    if not challenger.is_active:
        raise ApiError(TRAFFIC_ERROR, f"challenger_id {_show(challenger_id)} was removed; "
                                      "only active challengers can be changed")
    return challenger


def _new_challenger_id(taken: Iterable[str]) -> str:
    taken = set(taken)
    for _ in range(100):  # 64**6 ids: a clash is already rare, 100 in a row impossible
        candidate = new_id(CHALLENGER_PREFIX, CHALLENGER_ID_LENGTH)
        if candidate not in taken:
            return candidate
    raise RuntimeError("could not find a free challenger id")


def _replace_challenger(deployment: Deployment, updated: Challenger) -> Deployment:
    return deployment.with_challengers(
        tuple(updated if c.id == updated.id else c for c in deployment.challengers))


def apply_traffic_action(deployment: Deployment, action: TrafficAction,
                         models: Mapping[str, Model]) -> tuple[Deployment, Challenger | None]:
    """(new deployment, the challenger the action touched); None for toggle_shadow.

    `models` are the caller's org's registered models by id. A no-op (same share, same
    shadow mode) returns a deployment equal to the input. The allocation follows every
    change (tsplit.resources.Deployment): only the slots whose owner must change move, to
    or from the champion; a promoted challenger's slots stay with its model, now champion.
    """
    if action.action == "add_challenger":
        assert action.model_id is not None and action.traffic_bp is not None
        _check_registered_challenger_model(action.model_id, deployment, models, "model_id")
        for existing in deployment.active_challengers:
            if existing.model_id == action.model_id:
                raise ApiError(TRAFFIC_ERROR, f"model_id {_show(action.model_id)} is already an active "
                                              f"challenger ({existing.id}); use update_traffic to change its share")
        added = Challenger(_new_challenger_id(c.id for c in deployment.challengers),
                           action.model_id, action.traffic_bp, True)
        result = deployment.with_challengers(deployment.challengers + (added,))
        _check_total(result, "traffic_pct")
        return result, added
    if action.action == "remove_challenger":
        assert action.challenger_id is not None
        removed = replace(_active_challenger(deployment, action.challenger_id), is_active=False)
        return _replace_challenger(deployment, removed), removed
    if action.action == "update_traffic":
        assert action.challenger_id is not None and action.traffic_bp is not None
        updated = replace(_active_challenger(deployment, action.challenger_id), traffic_bp=action.traffic_bp)
        result = _replace_challenger(deployment, updated)
        _check_total(result, "traffic_pct")
        return result, updated
    if action.action == "toggle_shadow":
        assert action.shadow_mode is not None
        return replace(deployment, shadow_mode=action.shadow_mode), None
    if action.action == "promote_challenger":
        assert action.challenger_id is not None
        promoted = replace(_active_challenger(deployment, action.challenger_id), is_active=False)
        if promoted.model_id not in models:
            raise ApiError(TRAFFIC_ERROR, f"challenger_id {_show(promoted.id)} names model {promoted.model_id}, "
                                          "which is not registered; it cannot become the champion")
        # The old champion is dropped; the challenger's slots become the new champion's.
        return replace(_replace_challenger(deployment, promoted), champion_model_id=promoted.model_id), promoted
    raise ApiError(TRAFFIC_ERROR, f"action {_show(action.action)} is unknown; use one of {_ACTION_NAMES}")


# --- desired state (PUT /v1/deployments/{slug}/traffic, `tsplit apply`) ---------------------

@dataclass(frozen=True)
class DesiredChallenger:
    model_id: str
    traffic_bp: int


@dataclass(frozen=True)
class DesiredState:
    champion: str
    shadow_mode: bool
    challengers: tuple[DesiredChallenger, ...]


_DESIRED_FIELDS = ("deployment", "champion", "shadow_mode", "challengers")
_DESIRED_CHALLENGER_FIELDS = ("model_id", "traffic_pct")


def _parse_desired_challenger(item: Any, where: str) -> DesiredChallenger:
    if not isinstance(item, Mapping):
        raise ApiError(TRAFFIC_ERROR, f"{where} must be an object with model_id and traffic_pct, got {_kind(item)}")
    reject_unknown_fields(item, _DESIRED_CHALLENGER_FIELDS, TRAFFIC_ERROR, where=f"{where}.")
    for field in _DESIRED_CHALLENGER_FIELDS:
        if field not in item:
            raise ApiError(TRAFFIC_ERROR, f"{where} needs {field}")
    return DesiredChallenger(
        check_id(item["model_id"], MODEL_PREFIX, f"{where}.model_id", TRAFFIC_ERROR),
        pct_to_basis_points(item["traffic_pct"], f"{where}.traffic_pct"))


def parse_desired_state(body: Mapping[str, Any], deployment_id: str) -> DesiredState:
    """The whole traffic config a deployment should have: challengers listed by model."""
    body = json_object(body)
    reject_unknown_fields(body, _DESIRED_FIELDS, TRAFFIC_ERROR)
    named = body.get("deployment")
    if named is not None and named != deployment_id:
        raise ApiError(TRAFFIC_ERROR, f"deployment {_kind(named)} does not match the deployment "
                                      f"being changed ({deployment_id})")
    for field in ("champion", "shadow_mode", "challengers"):
        if field not in body:
            raise ApiError(TRAFFIC_ERROR, f"the desired state needs {field}")
    champion = check_id(body["champion"], MODEL_PREFIX, "champion", TRAFFIC_ERROR)
    shadow_mode = _check_bool(body["shadow_mode"], "shadow_mode", TRAFFIC_ERROR)
    items = body["challengers"] if body["challengers"] is not None else []  # YAML `challengers:` is null
    if not isinstance(items, (list, tuple)):
        raise ApiError(TRAFFIC_ERROR, f"challengers must be a list, got {_kind(items)}")
    challengers: list[DesiredChallenger] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"challengers[{index}]"
        challenger = _parse_desired_challenger(item, where)
        if challenger.model_id == champion:
            raise ApiError(TRAFFIC_ERROR, f"{where}.model_id {_show(champion)} is the champion; "
                                          "it cannot also be a challenger")
        if challenger.model_id in seen:
            raise ApiError(TRAFFIC_ERROR, f"{where}.model_id {_show(challenger.model_id)} is listed twice")
        seen.add(challenger.model_id)
        challengers.append(challenger)
    total = sum(c.traffic_bp for c in challengers)
    if total > MAX_CHALLENGERS_BP:
        raise ApiError(TRAFFIC_ERROR, f"challengers: traffic_pct adds up to {_format_bp(total)}; "
                                      f"the limit is {_format_bp(MAX_CHALLENGERS_BP)}")
    return DesiredState(champion, shadow_mode, tuple(challengers))


def apply_desired_state(deployment: Deployment, desired: DesiredState, models: Mapping[str, Model]) -> Deployment:
    """The deployment with the desired traffic; equal to the input when nothing differs.

    An active challenger of a listed model keeps its id and takes the new share; listed
    models without one get a new challenger; active challengers not listed become inactive.
    """
    if desired.champion != deployment.champion_model_id:
        raise ApiError(TRAFFIC_ERROR, f"champion {_show(desired.champion)} is not the champion of "
                                      f"{deployment.deployment_id} ({deployment.champion_model_id}); "
                                      "apply cannot change the champion")
    for index, wanted in enumerate(desired.challengers):
        _check_registered_challenger_model(wanted.model_id, deployment, models, f"challengers[{index}].model_id")
    shares = {c.model_id: c.traffic_bp for c in desired.challengers}
    kept: set[str] = set()
    challengers: list[Challenger] = []
    for current in deployment.challengers:
        if current.is_active and current.model_id in shares and current.model_id not in kept:
            kept.add(current.model_id)
            challengers.append(replace(current, traffic_bp=shares[current.model_id]))
        elif current.is_active:
            challengers.append(replace(current, is_active=False))
        else:
            challengers.append(current)
    for wanted in desired.challengers:
        if wanted.model_id not in kept:
            challenger_id = _new_challenger_id(c.id for c in challengers)
            challengers.append(Challenger(challenger_id, wanted.model_id, wanted.traffic_bp, True))
    result = deployment.with_challengers(tuple(challengers), shadow_mode=desired.shadow_mode)
    _check_total(result, "challengers")
    return result


# --- rollback (POST /v1/deployments/{slug}/rollback) ----------------------------------------

def parse_rollback(body: Mapping[str, Any]) -> int:
    body = json_object(body)
    reject_unknown_fields(body, ("to_version",), REQUEST_ERROR)
    if "to_version" not in body:
        raise ApiError(REQUEST_ERROR, "to_version is required: the cache_version to roll back to")
    return positive_int(body["to_version"], "to_version")


def rollback_to(deployment: Deployment, target: Deployment, models: Mapping[str, Model] | None = None) -> Deployment:
    """The deployment with `target`'s champion, challengers and shadow mode (target: an
    older version). Challengers added since the target version are kept, inactive, so
    their ids stay known. The allocation moves from the current one, only the slots whose
    owner must change. `models` (the org's registered models), when given, must hold the
    target's champion and active challengers.
    """
    in_target = {c.id for c in target.challengers}
    added_since = tuple(replace(c, is_active=False) for c in deployment.challengers if c.id not in in_target)
    result = deployment.with_challengers(target.challengers + added_since, shadow_mode=target.shadow_mode,
                                         champion_model_id=target.champion_model_id)
    active_models = [c.model_id for c in result.active_challengers]
    if len(set(active_models)) != len(active_models) or target.champion_model_id in active_models:
        raise ApiError(TRAFFIC_ERROR, f"to_version {target.cache_version} has two active challengers of "
                                      "one model, or the champion as a challenger")
    if models is not None:
        for model_id in (target.champion_model_id, *active_models):
            if model_id not in models:
                raise ApiError(TRAFFIC_ERROR, f"to_version {target.cache_version} names model {model_id}, "
                                              "which is no longer registered")
    _check_total(result, "to_version")
    return result


# --- models and deployments (POST /v1/models, POST /v1/deployments) -------------------------

_PORT = re.compile(r"[0-9]{1,5}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
    return True


def check_endpoint(value: Any, field: str = "endpoint", code: str = REQUEST_ERROR) -> str:
    """`host:port` (a name, an IPv4 address or a bracketed IPv6 one; port 1..65535).

    Syntax only: a server that is down may be registered.
    """
    if not isinstance(value, str):
        raise ApiError(code, f"{field} must be a string host:port, got {_kind(value)}")
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise ApiError(code, f"{field} {_show(value)} must be host:port, e.g. 127.0.0.1:9001")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ApiError(code, f"{field} {_show(value)} needs a port from 1 to 65535")
    if not _valid_host(host):
        hint = " (write IPv6 addresses in brackets: [::1]:9001)" if ":" in host and "[" not in host else ""
        raise ApiError(code, f"{field} {_show(value)} has an invalid host{hint}")
    return value


_MODEL_FIELDS = ("endpoint", "model_name", "model_version", "model_id", "http_endpoint")
_MODEL_UPDATE_FIELDS = ("endpoint", "http_endpoint", "model_name", "model_version")


def parse_model_registration(body: Mapping[str, Any], org_id: str) -> Model:
    """The model to register, in the caller's org; its id is generated when not given."""
    body = json_object(body)
    reject_unknown_fields(body, _MODEL_FIELDS, REQUEST_ERROR)
    for field in ("endpoint", "model_name"):
        if field not in body:
            raise ApiError(REQUEST_ERROR, f"{field} is required")
    model_id = body.get("model_id")
    version = body.get("model_version")
    return Model(
        model_id=new_id(MODEL_PREFIX) if model_id is None else check_id(model_id, MODEL_PREFIX, "model_id"),
        endpoint=check_endpoint(body["endpoint"]),
        model_name=_check_text(body["model_name"], "model_name", REQUEST_ERROR),
        model_version="" if version is None else _check_text(version, "model_version", REQUEST_ERROR, allow_empty=True),
        org_id=org_id,
        http_endpoint=_optional_endpoint(body.get("http_endpoint")),
    )


def _optional_endpoint(value: Any) -> str:
    """http_endpoint: host:port, or "" / null for none."""
    return "" if value is None or value == "" else check_endpoint(value, "http_endpoint")


def parse_model_update(body: Mapping[str, Any], current: Model) -> Model:
    """PATCH /v1/models/{id}: the fields given replace the current ones (http_endpoint ""
    or null removes it, model_version "" clears it); at least one field is needed."""
    body = json_object(body)
    reject_unknown_fields(body, _MODEL_UPDATE_FIELDS, REQUEST_ERROR)
    if not body:
        raise ApiError(REQUEST_ERROR, f"give at least one of {', '.join(_MODEL_UPDATE_FIELDS)}")
    changes: dict[str, str] = {}
    if "endpoint" in body:
        changes["endpoint"] = check_endpoint(body["endpoint"])
    if "http_endpoint" in body:
        changes["http_endpoint"] = _optional_endpoint(body["http_endpoint"])
    if "model_name" in body:
        changes["model_name"] = _check_text(body["model_name"], "model_name", REQUEST_ERROR)
    if "model_version" in body:
        version = body["model_version"]
        changes["model_version"] = "" if version is None else _check_text(
            version, "model_version", REQUEST_ERROR, allow_empty=True)
    return replace(current, **changes)


_DEPLOYMENT_FIELDS = ("champion_model_id", "deployment_id")


def parse_deployment_creation(body: Mapping[str, Any]) -> tuple[str | None, str]:
    """(deployment_id or None to generate one, champion_model_id)."""
    body = json_object(body)
    reject_unknown_fields(body, _DEPLOYMENT_FIELDS, REQUEST_ERROR)
    if "champion_model_id" not in body:
        raise ApiError(REQUEST_ERROR, "champion_model_id is required")
    champion = check_id(body["champion_model_id"], MODEL_PREFIX, "champion_model_id")
    deployment_id = body.get("deployment_id")
    return (None if deployment_id is None else check_deployment_id(deployment_id)), champion


def check_champion_registered(champion_model_id: str, models: Mapping[str, Model]) -> None:
    """For CreateDeployment: the champion must be one of the caller's org's models."""
    if champion_model_id not in models:
        raise ApiError(REQUEST_ERROR, f"champion_model_id {_show(champion_model_id)} is not a registered model")
