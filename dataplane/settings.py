"""tsplit-router's settings (SPEC section 7, tsplit.settings): flags first, then variables
(TSPLIT_ETCD, TSPLIT_ETCD_PREFIX, TSPLIT_LOG_LEVEL shared; the rest TSPLIT_ROUTER_<FLAG>),
then defaults; validated before anything starts, with messages that name the flag."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from tsplit.layout import DEFAULT_PREFIX, Layout
from tsplit.settings import (
    SettingsError, check_host_port, check_optional_host_port, join_host_port, option, parse_flags, parse_host_port,
    parse_host_port_list, parse_int,
)

EVENT_LOOPS = ("uvloop", "asyncio")
AUTH_KINDS = ("none", "jwt")

__all__ = ["EVENT_LOOPS", "RouterSettings", "available_cpus", "join_host_port", "parse_settings",
           "split_host_port"]


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """host:port of flag --what (":0": a free port on 127.0.0.1); ValueError naming it."""
    try:
        return parse_host_port(text)
    except ValueError as err:
        raise ValueError(f"--{what} {err}") from None


def available_cpus() -> int:
    """The CPUs this process may run on (--workers auto, --threads auto)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _workers(text: str) -> int:
    return available_cpus() if text.strip().lower() == "auto" else parse_int(text)


def _threads(text: str) -> int:
    return 0 if text.strip().lower() == "auto" else parse_int(text)


@dataclass(frozen=True)
class RouterSettings:
    listen: str = option("127.0.0.1:8001", "gRPC listen address host:port (':0' picks a free port)",
                         parse=check_host_port)
    etcd: str = option("127.0.0.1:2379", "etcd endpoints, comma-separated host:port", shared=True)
    etcd_prefix: str = option(DEFAULT_PREFIX, "etcd key prefix", shared=True)
    metrics_listen: str = option("", "Prometheus metrics host:port (empty: off)", parse=check_optional_host_port)
    router_id: str = option("", "this router's id in etcd (default r-<random>)")
    advertise: str = option("", "address other processes reach this router at (default: the bound address)")
    # Processes of main(), each its own router ('auto': one per CPU). One by default: the
    # native core uses every CPU itself (--threads), in one router record and one table.
    workers: int = option(1, "router processes sharing the listen port, each its own router; 'auto': one per CPU",
                          parse=_workers)
    threads: int = option(0, "the native core's serving threads, one runtime and listener each; 0 or 'auto': "
                          "one per CPU (divided among --workers)", parse=_threads)
    backend_connections: int = option(1, "HTTP/2 connections each serving thread keeps to each model server; one "
                                      "multiplexes every call, so the server reads and answers them in batches")
    event_loop: str = option("uvloop", "the event loop of the process's Python side (etcd, registration, "
                             "metrics): 'uvloop' (falls back to asyncio's when not installed) or 'asyncio'")
    reuse_port: bool = option(False, "share the listen port with other processes (SO_REUSEPORT)")
    max_inflight_mirrors: int = option(256, "shadow copies in flight per router; past it copies are dropped and counted")
    mirror_timeout_s: float = option(10.0, "deadline of a shadow copy, seconds", name="mirror_timeout")
    request_timeout_s: float = option(300.0, "backend deadline when the client sets none, seconds",
                                      name="request_timeout")
    max_message_mb: int = option(64, "largest request or response accepted from clients, MiB")
    shutdown_grace_s: float = option(10.0, "seconds in-flight requests get to finish on SIGTERM",
                                     name="shutdown_grace")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR", shared=True)
    # --auth jwt (SPEC section 5, "Auth"): the control plane's JWT flags.
    auth: str = option("none", "'none', or 'jwt': inference calls need a bearer token of the deployment's org")
    jwt_public_key: str = option("", "PEM file of the public key that verifies tokens (with --auth jwt)", shared=True)
    jwks: str = option("", "JWKS file of the keys that verify tokens (with --auth jwt, instead of --jwt-public-key)",
                       shared=True)
    jwt_issuer: str = option("", "required token issuer (iss), when set", shared=True)
    jwt_audience: str = option("", "required token audience (aud), when set", shared=True)

    def __post_init__(self) -> None:
        split_host_port(self.listen, "listen")
        if self.metrics_listen:
            split_host_port(self.metrics_listen, "metrics-listen")
        try:
            parse_host_port_list(self.etcd)
        except ValueError as err:
            raise ValueError(f"--etcd: {err}") from None
        Layout(self.etcd_prefix)
        if self.router_id and ("/" in self.router_id or not self.router_id.isprintable()):
            raise ValueError(f"--router-id {self.router_id!r} must be printable and without '/'")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        for name in ("workers", "backend_connections", "max_inflight_mirrors", "max_message_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.threads < 0:
            raise ValueError("--threads must be a count of threads, or 0 or 'auto' (one per CPU)")
        for name in ("mirror_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be positive (seconds)")
        if self.shutdown_grace_s < 0:
            raise ValueError("--shutdown-grace must not be negative (seconds)")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"--log-level {self.log_level!r} is not a logging level")
        if self.auth not in AUTH_KINDS:
            raise ValueError(f"--auth must be one of {', '.join(AUTH_KINDS)}, not {self.auth!r}")
        if self.auth == "jwt":
            if bool(self.jwt_public_key) == bool(self.jwks):
                raise ValueError("--auth jwt needs exactly one of --jwt-public-key (PEM file) or --jwks (JWKS file)")
            path = self.jwt_public_key or self.jwks
            if not os.path.isfile(path):
                raise ValueError(f"--{'jwt-public-key' if self.jwt_public_key else 'jwks'} {path!r}: no such file")
        elif self.jwt_public_key or self.jwks:
            raise ValueError("--jwt-public-key and --jwks take effect with --auth jwt; give it too (or drop them)")

    def auth_config(self) -> dict | None:
        """The native core's `auth` config (None: --auth none). The key file is read, and a
        bad one refused, when the core starts."""
        if self.auth != "jwt":
            return None
        return {"public_key_path": self.jwt_public_key or None, "jwks_path": self.jwks or None,
                "issuer": self.jwt_issuer or None, "audience": self.jwt_audience or None}

    def router_id_or_new(self) -> str:
        """--router-id, or a new random one (each call makes another)."""
        return self.router_id or f"r-{secrets.token_hex(4)}"


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> RouterSettings:
    """Flags first, then TSPLIT_* variables, then defaults. Exits 2 with a message naming
    the flag on bad input."""
    try:
        return parse_flags(RouterSettings, "router", argv, env, prog="tsplit-router",
                           description="tsplit data-plane router (OIP v2)")
    except SettingsError as err:
        print(f"tsplit-router: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
