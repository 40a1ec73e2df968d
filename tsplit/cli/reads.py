"""The ops path: read the documented etcd layout directly (works while the control plane is down)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsplit.cli.context import CliError
from tsplit.etcd import Etcd, EtcdUnavailable
from tsplit.layout import Layout
from tsplit.resources import Deployment, Model, loads


@dataclass(frozen=True)
class ClusterState:
    deployments: dict[str, Deployment]
    models: dict[str, Model]
    routers: list[dict[str, Any]]
    revision: int


def _parse_all(kvs, layout: Layout, parse) -> dict:
    out = {}
    for kv in kvs:
        try:
            out[layout.slug_of(kv.key)] = parse(loads(kv.value))
        except (ValueError, KeyError, TypeError):
            continue  # a value we cannot read is skipped, not fatal to the whole view
    return out


async def read_state(endpoints: str, layout: Layout) -> ClusterState:
    async with Etcd(endpoints, timeout=3.0) as etcd:
        try:
            kvs, revision = await etcd.get_prefix(layout.prefix + "/")
        except EtcdUnavailable as err:
            raise CliError(f"etcd at {endpoints} is unreachable: {err}") from err
    by_kind: dict[str, list] = {"models": [], "deployments": [], "routers": []}
    for kv in kvs:
        kind = kv.key[len(layout.prefix) + 1:].split("/", 1)[0]
        if kind in by_kind:
            by_kind[kind].append(kv)
    routers = []
    for kv in by_kind["routers"]:
        try:
            routers.append(loads(kv.value))
        except ValueError:
            continue
    return ClusterState(
        deployments=_parse_all(by_kind["deployments"], layout, Deployment.from_json),
        models=_parse_all(by_kind["models"], layout, Model.from_json),
        routers=routers,
        revision=revision,
    )


async def read_history(endpoints: str, layout: Layout, slug: str) -> list[dict[str, Any]]:
    async with Etcd(endpoints, timeout=3.0) as etcd:
        try:
            kvs, _ = await etcd.get_prefix(layout.history(slug))
        except EtcdUnavailable as err:
            raise CliError(f"etcd at {endpoints} is unreachable: {err}") from err
    entries = []
    for kv in kvs:
        entry = loads(kv.value)
        entry.setdefault("cache_version", int(layout.slug_of(kv.key)))
        entries.append(entry)
    return entries
