"""The control plane's settings: flags first, then TSPLIT_* variables, then defaults
(SPEC section 7, tsplit.settings); validated before anything starts, with messages that
name the flag."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from controlplane.auth import AuthSettings
from controlplane.records import DEFAULT_IDEMPOTENCY_TTL_S
from controlplane.store import StoreSettings
from tsplit.layout import DEFAULT_PREFIX, Layout
from tsplit.settings import SettingsError, check_host_port, option, parse_duration, parse_flags, parse_host_port_list

DEFAULT_LISTEN = "127.0.0.1:50050"
DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_GRACE_S = 5.0

__all__ = ["ControlPlaneFlags", "ControlPlaneSettings", "SettingsError", "settings_from_args"]


@dataclass(frozen=True)
class ControlPlaneSettings:
    auth: AuthSettings
    listen: str = DEFAULT_LISTEN
    etcd_endpoints: tuple[str, ...] = (DEFAULT_ETCD,)
    etcd_prefix: str = DEFAULT_PREFIX
    grace_s: float = DEFAULT_GRACE_S
    store: StoreSettings = field(default_factory=StoreSettings)
    guardrails: bool = True  # campaign for {prefix}/leader/guardrails and judge while holding it
    guardrails_lease_ttl_s: int = 5


def _endpoints(text: str) -> tuple[str, ...]:
    return tuple(parse_host_port_list(text))


def _prefix(text: str) -> str:
    Layout(text)
    return text


def _file(text: str) -> str:
    if not Path(text).is_file():
        raise ValueError("is not a readable file")
    return text


def _grace(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 <= seconds <= 600:
        raise ValueError("must be from 0 to 600 seconds")
    return seconds


def _on_off(text: str) -> str:
    if text.strip().lower() not in ("on", "off"):
        raise ValueError("must be on or off")
    return text.strip().lower()


def _ttl(text: str) -> float:
    seconds = parse_duration(text)
    if not 1 <= seconds <= 30 * 86400:
        raise ValueError("must be from 1 second to 30 days")
    return seconds


@dataclass(frozen=True)
class ControlPlaneFlags:
    listen: str = option(DEFAULT_LISTEN, "host:port to serve gRPC on (:0 picks a free port)", parse=check_host_port)
    etcd: tuple[str, ...] = option((DEFAULT_ETCD,), "comma-separated etcd endpoints host:port", parse=_endpoints,
                                   shared=True)
    etcd_prefix: str = option(DEFAULT_PREFIX, "key prefix in etcd", parse=_prefix, shared=True)
    jwt_public_key: str = option("", "PEM file of the public key that verifies tokens", parse=_file, shared=True)
    jwks: str = option("", "JWKS file of the keys that verify tokens (instead of --jwt-public-key)",
                       parse=_file, shared=True)
    jwt_issuer: str = option("", "required token issuer (iss), when set", shared=True)
    jwt_audience: str = option("", "required token audience (aud), when set", shared=True)
    grace: float = option(DEFAULT_GRACE_S, "seconds in-flight calls get on shutdown", parse=_grace)
    idempotency_ttl: float = option(DEFAULT_IDEMPOTENCY_TTL_S, "how long idempotency records are kept "
                                    "(seconds, or with s, m, h, d: 24h)", parse=_ttl)
    guardrails: str = option("on", "on or off: judge guardrails when this replica holds the leader key",
                             parse=_on_off)

    def __post_init__(self) -> None:
        if bool(self.jwt_public_key) == bool(self.jwks):
            raise ValueError("give exactly one of --jwt-public-key (PEM file) or --jwks (JWKS file) to verify tokens")


def settings_from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ControlPlaneSettings:
    flags = parse_flags(ControlPlaneFlags, "controlplane", argv, environ, prog="tsplit-controlplane",
                        description="tsplit control plane: the gRPC API that writes versioned configs to etcd")
    auth = AuthSettings(public_key_path=flags.jwt_public_key or None, jwks_path=flags.jwks or None,
                        issuer=flags.jwt_issuer or None, audience=flags.jwt_audience or None)
    return ControlPlaneSettings(
        auth=auth, listen=flags.listen, etcd_endpoints=flags.etcd, etcd_prefix=flags.etcd_prefix, grace_s=flags.grace,
        store=replace(StoreSettings(), idempotency_ttl_s=flags.idempotency_ttl), guardrails=flags.guardrails == "on")
