"""The resources both planes read: models and deployments, as stored in etcd.

The JSON form here is the etcd value, the REST body and (through the proto's JSON
mapping) the gRPC message, so there is one definition of each field. Traffic shares are
kept as integer basis points (1/10,000) so that sums are exact; JSON shows percent.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

import orjson
from tsplit.allocation import (
    CHAMPION, SLOTS, Allocation, allocation_from_json, allocation_to_json, fits, legacy_allocation,
    next_allocation)

BASIS_POINTS = 10_000  # 100 %
BP_PER_PCT = 100


def new_id(prefix: str, length: int = 8) -> str:
    """prefix + `length` url-safe random characters, e.g. new_id("mod_") -> "mod_nY5kT2Wq"."""
    return prefix + secrets.token_urlsafe(length)[:length]


def pct_to_json(bp: int) -> int | float:
    """Basis points as the percent JSON shows: 1000 -> 10, 1234 -> 12.34."""
    return bp // BP_PER_PCT if bp % BP_PER_PCT == 0 else bp / BP_PER_PCT


def pct_to_bp(pct: float) -> int:
    return round(pct * BP_PER_PCT)


@dataclass(frozen=True)
class Model:
    model_id: str
    endpoint: str
    model_name: str
    model_version: str = ""
    org_id: str = ""
    http_endpoint: str = ""  # host:port of the same server's v2 REST port; "" when none

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "endpoint": self.endpoint, "model_name": self.model_name,
            "model_version": self.model_version, "org_id": self.org_id, "http_endpoint": self.http_endpoint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Model":
        return cls(
            model_id=data["model_id"], endpoint=data["endpoint"], model_name=data["model_name"],
            model_version=data.get("model_version", ""), org_id=data.get("org_id", ""),
            http_endpoint=data.get("http_endpoint", ""),
        )


@dataclass(frozen=True)
class Challenger:
    id: str
    model_id: str
    traffic_bp: int
    is_active: bool = True

    @property
    def traffic_pct(self) -> int | float:
        return pct_to_json(self.traffic_bp)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model_id": self.model_id, "traffic_pct": self.traffic_pct, "is_active": self.is_active}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Challenger":
        return cls(data["id"], data["model_id"], pct_to_bp(data["traffic_pct"]), bool(data.get("is_active", True)))


@dataclass(frozen=True)
class GuardrailPolicy:
    """A deployment's guardrail policy (SPEC 5a), validated by controlplane.guardrails.policy.

    steps are traffic shares in basis points, increasing; latency_quantile None: that test is off.
    """

    alpha: float = 0.01
    error_rate: bool = True
    latency_quantile: float | None = 0.99
    srm: bool = True
    steps_bp: tuple[int, ...] = ()
    step_after_requests: int = 2000

    def next_step_bp(self, traffic_bp: int) -> int | None:
        """The first step above traffic_bp, None past the last one."""
        return next((step for step in self.steps_bp if step > traffic_bp), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "error_rate": self.error_rate, "latency_quantile": self.latency_quantile,
            "srm": self.srm, "steps": [pct_to_json(bp) for bp in self.steps_bp],
            "step_after_requests": self.step_after_requests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GuardrailPolicy":
        quantile = data.get("latency_quantile", 0.99)
        return cls(
            alpha=float(data.get("alpha", 0.01)), error_rate=bool(data.get("error_rate", True)),
            latency_quantile=None if quantile is None else float(quantile), srm=bool(data.get("srm", True)),
            steps_bp=tuple(pct_to_bp(step) for step in data.get("steps") or ()),
            step_after_requests=int(data.get("step_after_requests", 2000)),
        )


@dataclass(frozen=True)
class Deployment:
    """A deployment's config. `allocation` (the owner of each of 10,000 slots, see
    tsplit.allocation) always matches the active challengers' shares: constructing a
    Deployment, `dataclasses.replace` included, moves the allocation it is given to the
    new shares with next_allocation (only the slots whose owner must change), and lays one
    out with legacy_allocation when given none (a config stored before allocations). When
    the shares do not fit in 10,000 slots (a config no check would store) it is ()."""

    deployment_id: str
    org_id: str
    champion_model_id: str
    challengers: tuple[Challenger, ...] = ()
    shadow_mode: bool = False
    cache_version: int = 1
    updated_at: str = ""
    updated_by: str = ""
    guardrails: GuardrailPolicy | None = None  # absent from the JSON when None
    allocation: Allocation | None = None

    def __post_init__(self) -> None:
        weights = self.slot_weights()
        if sum(weights.values()) > SLOTS:
            allocation: Allocation = ()
        elif self.allocation:
            allocation = self.allocation if fits(self.allocation, weights) else next_allocation(self.allocation, weights)
        else:
            allocation = legacy_allocation(weights)
        object.__setattr__(self, "allocation", allocation)

    def slot_weights(self) -> dict[str, int]:
        """The slots each active challenger owns, in list order (the first of a repeated
        id; none for a share outside 1..10,000 or the id "champion")."""
        weights: dict[str, int] = {}
        for c in self.challengers:
            if c.is_active and 0 < c.traffic_bp <= SLOTS and c.id != CHAMPION and c.id not in weights:
                weights[c.id] = c.traffic_bp
        return weights

    @property
    def active_challengers(self) -> tuple[Challenger, ...]:
        return tuple(c for c in self.challengers if c.is_active)

    @property
    def challenger_bp(self) -> int:
        """Sum of the active challengers' shares, in basis points."""
        return sum(c.traffic_bp for c in self.active_challengers)

    @property
    def champion_bp(self) -> int:
        """In split mode the champion gets what the active challengers do not."""
        return BASIS_POINTS - self.challenger_bp

    def challenger(self, challenger_id: str) -> Challenger | None:
        return next((c for c in self.challengers if c.id == challenger_id), None)

    def with_challengers(self, challengers: tuple[Challenger, ...], **changes: Any) -> "Deployment":
        return replace(self, challengers=challengers, **changes)

    def same_traffic(self, other: "Deployment") -> bool:
        """True when routing would not differ (metadata aside)."""
        return (self.champion_model_id, self.challengers, self.shadow_mode, self.allocation) == (
            other.champion_model_id, other.challengers, other.shadow_mode, other.allocation)

    def to_json(self) -> dict[str, Any]:
        data = {
            "deployment_id": self.deployment_id, "org_id": self.org_id,
            "champion_model_id": self.champion_model_id,
            "challengers": [c.to_json() for c in self.challengers],
            "shadow_mode": self.shadow_mode, "allocation": allocation_to_json(self.allocation or ()),
            "cache_version": self.cache_version, "updated_at": self.updated_at, "updated_by": self.updated_by,
        }
        if self.guardrails is not None:
            data["guardrails"] = self.guardrails.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Deployment":
        return cls(
            deployment_id=data["deployment_id"], org_id=data.get("org_id", ""),
            champion_model_id=data["champion_model_id"],
            challengers=tuple(Challenger.from_json(c) for c in data.get("challengers", ())),
            shadow_mode=bool(data.get("shadow_mode", False)), cache_version=int(data["cache_version"]),
            updated_at=data.get("updated_at", ""), updated_by=data.get("updated_by", ""),
            guardrails=GuardrailPolicy.from_json(data["guardrails"]) if data.get("guardrails") else None,
            allocation=_stored_allocation(data.get("allocation")),
        )


def _stored_allocation(data: Any) -> Allocation | None:
    """The allocation a config holds; None (lay one out) when it has none or a malformed one."""
    if data is None:
        return None
    try:
        return allocation_from_json(data)
    except ValueError:
        return None


def dumps(data: Any) -> bytes:
    """The one encoding of every value stored in etcd: compact UTF-8 JSON, keys in insertion
    order, by orjson (a change's history and record values cost ~40 us to encode with the
    json module, ~2 us with orjson). JSON has no NaN or Infinity: orjson would write them
    as null, so what comes from outside (a request body) is checked with all_finite before
    it is stored; a config's numbers are basis points and validated policies, always finite."""
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


def all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a JSON-like value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True


def loads(raw: bytes) -> Any:
    """A stored value (orjson: a router's cold start parses 10,000 of them; a malformed one
    raises orjson.JSONDecodeError, a json.JSONDecodeError and ValueError)."""
    return orjson.loads(raw)
