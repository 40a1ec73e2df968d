"""The control plane's settings: flags first, then TSPLIT_* variables, then defaults
(SPEC section 7); validated before anything starts, with messages that name the flag."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from controlplane.auth import AuthSettings
from controlplane.store import StoreSettings
from tsplit.etcd import parse_endpoints
from tsplit.layout import DEFAULT_PREFIX, Layout

DEFAULT_LISTEN = "127.0.0.1:50050"
DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_GRACE_S = 5.0


class SettingsError(ValueError):
    """A flag or variable that cannot work; the message names it."""


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


# (flag, environment variable, help)
_OPTIONS = (
    ("--listen", "TSPLIT_CONTROLPLANE_LISTEN", f"host:port to serve gRPC on (default {DEFAULT_LISTEN}; port 0 picks one)"),
    ("--etcd", "TSPLIT_ETCD", f"comma-separated etcd endpoints host:port (default {DEFAULT_ETCD})"),
    ("--etcd-prefix", "TSPLIT_ETCD_PREFIX", f"key prefix in etcd (default {DEFAULT_PREFIX})"),
    ("--jwt-public-key", "TSPLIT_JWT_PUBLIC_KEY", "PEM file of the public key that verifies tokens"),
    ("--jwks", "TSPLIT_JWKS", "JWKS file of the keys that verify tokens (instead of --jwt-public-key)"),
    ("--jwt-issuer", "TSPLIT_JWT_ISSUER", "required token issuer (iss), when set"),
    ("--jwt-audience", "TSPLIT_JWT_AUDIENCE", "required token audience (aud), when set"),
    ("--grace", "TSPLIT_CONTROLPLANE_GRACE", f"seconds in-flight calls get on shutdown (default {DEFAULT_GRACE_S:g})"),
    ("--guardrails", "TSPLIT_CONTROLPLANE_GUARDRAILS",
     "on or off: judge guardrails when this replica holds the leader key (default on)"),
)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsplit-controlplane", description="tsplit control plane: the gRPC API that writes versioned configs to etcd")
    for flag, variable, text in _OPTIONS:
        parser.add_argument(flag, help=f"{text} [env {variable}]")
    return parser


def check_listen(value: str, flag: str = "--listen") -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{flag} {value!r} must be host:port with a port from 0 to 65535")
    return value


def _existing_file(value: str, flag: str) -> str:
    if not Path(value).is_file():
        raise SettingsError(f"{flag} {value!r} is not a readable file")
    return value


def settings_from_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ControlPlaneSettings:
    environ = os.environ if environ is None else environ
    args = argument_parser().parse_args(argv)

    def pick(flag: str) -> str | None:
        variable = next(v for f, v, _ in _OPTIONS if f == flag)
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        return value if value is not None else (environ.get(variable) or None)

    listen = check_listen(pick("--listen") or DEFAULT_LISTEN)
    try:
        endpoints = tuple(parse_endpoints(pick("--etcd") or DEFAULT_ETCD))
    except ValueError as err:
        raise SettingsError(f"--etcd: {err}") from None
    prefix = pick("--etcd-prefix") or DEFAULT_PREFIX
    try:
        Layout(prefix)
    except ValueError as err:
        raise SettingsError(f"--etcd-prefix: {err}") from None
    public_key, jwks = pick("--jwt-public-key"), pick("--jwks")
    if bool(public_key) == bool(jwks):
        raise SettingsError("give exactly one of --jwt-public-key (PEM file) or --jwks (JWKS file) to verify tokens")
    grace_text = pick("--grace")
    try:
        grace_s = float(grace_text) if grace_text else DEFAULT_GRACE_S
    except ValueError:
        raise SettingsError(f"--grace {grace_text!r} must be a number of seconds") from None
    if not 0 <= grace_s <= 600:
        raise SettingsError(f"--grace {grace_s:g} must be from 0 to 600 seconds")
    auth = AuthSettings(
        public_key_path=_existing_file(public_key, "--jwt-public-key") if public_key else None,
        jwks_path=_existing_file(jwks, "--jwks") if jwks else None,
        issuer=pick("--jwt-issuer"), audience=pick("--jwt-audience"))
    guardrails = (pick("--guardrails") or "on").lower()
    if guardrails not in ("on", "off"):
        raise SettingsError(f"--guardrails {guardrails!r} must be on or off")
    return ControlPlaneSettings(auth=auth, listen=listen, etcd_endpoints=endpoints, etcd_prefix=prefix, grace_s=grace_s,
                                guardrails=guardrails == "on")
