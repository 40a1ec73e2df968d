"""The proxyless client's settings: a frozen dataclass, validated when built."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from dataplane.registration import RegistrationSettings
from tsplit.layout import DEFAULT_PREFIX, Layout
from tsplit.settings import parse_host_port_list

ENV_ETCD = "TSPLIT_ETCD"
ENV_ETCD_PREFIX = "TSPLIT_ETCD_PREFIX"
DEFAULT_ETCD = "127.0.0.1:2379"


@dataclass(frozen=True)
class ProxylessSettings:
    etcd: str = DEFAULT_ETCD                  # comma-separated host:port of every etcd member
    etcd_prefix: str = DEFAULT_PREFIX
    client_id: str = ""                       # its id in {prefix}/routers/; empty: c-<random>
    report: bool = True                       # keep a lease-bound record (kind "client")
    # Calls made before the first etcd snapshot wait for it until this long after the
    # client was created; past that they fail at once with UNAVAILABLE until it arrives.
    wait_ready_s: float = 5.0
    max_inflight_mirrors: int = 256           # shadow copies in flight; past it dropped and counted
    mirror_timeout_s: float = 10.0            # deadline of a shadow copy
    default_timeout_s: float | None = None    # backend deadline when the caller sets none
    close_timeout_s: float = 5.0              # close(): how long to wait for the lease revoke etc.
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)

    def __post_init__(self) -> None:
        endpoints = parse_host_port_list(self.etcd)
        object.__setattr__(self, "etcd", ",".join(endpoints))
        Layout(self.etcd_prefix)
        if self.client_id and ("/" in self.client_id or not self.client_id.isprintable()):
            raise ValueError(f"client_id {self.client_id!r} must be printable and without '/'")
        if self.wait_ready_s < 0:
            raise ValueError("wait_ready_s must not be negative (seconds)")
        if self.max_inflight_mirrors < 1:
            raise ValueError("max_inflight_mirrors must be at least 1")
        for name in ("mirror_timeout_s", "close_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (seconds)")
        if self.default_timeout_s is not None and not self.default_timeout_s > 0:
            raise ValueError("default_timeout_s must be positive (seconds) or None")


def settings_from(etcd_endpoints: str | Sequence[str] | None, etcd_prefix: str | None,
                  env: Mapping[str, str] | None = None, **options) -> ProxylessSettings:
    """Arguments first, then TSPLIT_ETCD / TSPLIT_ETCD_PREFIX, then the defaults."""
    env = os.environ if env is None else env
    if etcd_endpoints is None:
        etcd_endpoints = env.get(ENV_ETCD, DEFAULT_ETCD)
    if not isinstance(etcd_endpoints, str):
        etcd_endpoints = ",".join(etcd_endpoints)
    if etcd_prefix is None:
        etcd_prefix = env.get(ENV_ETCD_PREFIX, DEFAULT_PREFIX)
    return ProxylessSettings(etcd=etcd_endpoints, etcd_prefix=etcd_prefix, **options)
