"""The ops path: read the documented etcd layout directly (works while the control plane is down)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tsplit import router_record
from tsplit.cli.context import CliError
from tsplit.allocation import moved_slots
from tsplit.etcd import Etcd, EtcdError
from tsplit.layout import Layout
from tsplit.resources import Deployment, Model, loads


@dataclass(frozen=True)
class ClusterState:
    deployments: dict[str, Deployment]
    models: dict[str, Model]
    routers: list[dict[str, Any]]
    revision: int
    alarms: tuple[str, ...] = ()  # etcd's raised alarms ("NOSPACE": every write is refused)
    guardrails: dict[str, dict[str, Any]] = field(default_factory=dict)  # the judge's state by slug


def _parse_all(kvs, layout: Layout, parse) -> dict:
    out = {}
    for kv in kvs:
        try:
            out[layout.slug_of(kv.key)] = parse(loads(kv.value))
        except (ValueError, KeyError, TypeError):
            continue  # a value we cannot read is skipped, not fatal to the whole view
    return out


async def read_state(endpoints: str, layout: Layout) -> ClusterState:
    """Models, deployments, routers and the guardrail judge's states, read at one revision
    (not history or records), and etcd's alarms."""
    async with Etcd(endpoints, timeout=3.0) as etcd:
        try:
            (models, deployments, router_kvs, guardrail_kvs), revision = await etcd.get_prefixes(
                [layout.models, layout.deployments, layout.routers, layout.guardrail_states])
            alarms = tuple(dict.fromkeys(await etcd.alarms()))
        except EtcdError as err:
            raise CliError(f"etcd at {endpoints} is unreachable: {err}") from err
    by_kind = {"models": models, "deployments": deployments, "guardrails": guardrail_kvs}
    return ClusterState(
        deployments=_parse_all(by_kind["deployments"], layout, Deployment.from_json),
        models=_parse_all(by_kind["models"], layout, Model.from_json),
        routers=router_record.parse_records(kv.value for kv in router_kvs),
        revision=revision,
        alarms=alarms,
        guardrails=_parse_all(by_kind["guardrails"], layout, dict),
    )


def alarm_text(alarms: tuple[str, ...]) -> str | None:
    """A line for people when etcd has raised an alarm."""
    if "NOSPACE" in alarms:
        return ("etcd alarm NOSPACE: etcd is out of space and refuses every write (503 storage_full); "
                "compact and defragment it, then `etcdctl alarm disarm`, or raise --quota-backend-bytes")
    return f"etcd alarms: {', '.join(alarms)}" if alarms else None


async def read_history(
    endpoints: str, layout: Layout, slug: str, after: int = 0, limit: int = 1000,
) -> tuple[list[dict[str, Any]], bool]:
    """Up to limit versions after version `after`, oldest first, and whether more follow."""
    async with Etcd(endpoints, timeout=3.0) as etcd:
        try:
            kvs, more = await etcd.get_range(layout.history_version(slug, after + 1), layout.history(slug), limit)
        except EtcdError as err:
            raise CliError(f"etcd at {endpoints} is unreachable: {err}") from err
    entries = []
    for kv in kvs:
        entry = loads(kv.value)
        entry.setdefault("cache_version", int(layout.slug_of(kv.key)))
        entries.append(entry)
    return entries, more


def add_slots_moved(entries: list[dict[str, Any]], before: dict[str, Any] | None = None) -> None:
    """Set each version's `slots_moved`: how many of the 10,000 slots changed owner since the
    version before (`before`, the entry preceding the page, or the previous entry; 0 for
    version 1; None when a config cannot be read). A version stored before allocations
    existed counts with the allocation laid out for it (champion first)."""
    previous = None
    if before is not None:
        try:
            previous = Deployment.from_json(before.get("config") or {})
        except (ValueError, KeyError, TypeError):
            previous = None
    for entry in entries:
        try:
            current = Deployment.from_json(entry.get("config") or {})
        except (ValueError, KeyError, TypeError):
            entry["slots_moved"], previous = None, None
            continue
        if previous is not None:
            entry["slots_moved"] = moved_slots(previous.allocation or (), current.allocation or ())
        else:
            entry["slots_moved"] = 0 if current.cache_version == 1 else None
        previous = current
