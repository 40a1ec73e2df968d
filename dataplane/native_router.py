"""The Python side of the router (dataplane.server) around its native core: what crosses into
dataplane._native and back.

Into the core: the start config, one immutable routing snapshot per change (the full
table at the first snapshot, then only the changed routes), and the reflection
descriptors. Out of it: the counters, read as JSON and shaped like dataplane.stats
(RouterStats.snapshot for the router record, VariantStats rows for Prometheus). Nothing
here runs per request.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterable, Mapping

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool

from dataplane import _native
from dataplane.config_sync import RouteChange
from dataplane.routing import DeploymentRoute, RoutingTable
from dataplane.stats import VariantStats


def allocation_of(route: DeploymentRoute) -> list[dict[str, Any]]:
    """The route's slot ranges (DeploymentRoute.allocation, over its routed variants), read
    from its slot triples directly (no SlotRange per range: 10,000 routes at a cold start)."""
    variants = route.variants
    return [{"variant": variants[i].name, "start": start, "end": end} for start, end, i in route.slots]


def route_spec(route: DeploymentRoute) -> dict[str, Any]:
    return {
        "slug": route.slug,
        "cache_version": route.cache_version,
        "shadow_mode": route.shadow_mode,
        "org_id": route.org_id,
        "variants": [{"name": v.name, "model_id": v.model_id, "endpoint": v.endpoint, "model_name": v.model_name,
                      "model_version": v.model_version, "http_endpoint": v.http_endpoint}
                     for v in route.variants],
        "allocation": allocation_of(route),
    }


def snapshot_json(table: RoutingTable) -> str:
    """The full table for the core (orjson: the json module took ~1 s of a 10,000-route cold start)."""
    return orjson.dumps({"revision": table.revision, "routes": [route_spec(r) for r in table.routes.values()]}).decode()


def changes_json(table: RoutingTable, changes: Iterable[RouteChange]) -> str:
    upsert, remove = [], []
    for change in changes:
        if change.new is None:
            remove.append(change.slug)
        else:
            upsert.append(route_spec(change.new))
    return orjson.dumps({"revision": table.revision, "upsert": upsert, "remove": remove}).decode()


_REFLECTED_MODULES = (
    "tsplit.inference.grpc_predict_v2_pb2",
    "grpc_health.v1.health_pb2",
    "grpc_reflection.v1alpha.reflection_pb2",
)


def reflection_spec(services: Iterable[str]) -> dict[str, Any]:
    """What the core's reflection serves: each service's file and its dependencies as
    serialized FileDescriptorProtos, and the file of every symbol in them."""
    import importlib

    for module in _REFLECTED_MODULES:
        importlib.import_module(module)
    pool = descriptor_pool.Default()
    files: dict[str, str] = {}
    symbols: dict[str, str] = {}
    deps: dict[str, list[str]] = {}

    def add_file(fd) -> None:
        if fd.name in files:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = base64.b64encode(proto.SerializeToString()).decode()
        deps[fd.name] = [d.name for d in fd.dependencies]
        package = f"{fd.package}." if fd.package else ""

        def add_message(desc, prefix: str) -> None:
            symbols[prefix + desc.name] = fd.name
            for nested in desc.nested_types:
                add_message(nested, f"{prefix}{desc.name}.")
            for enum in desc.enum_types:
                symbols[f"{prefix}{desc.name}.{enum.name}"] = fd.name

        for desc in fd.message_types_by_name.values():
            add_message(desc, package)
        for enum in fd.enum_types_by_name.values():
            symbols[package + enum.name] = fd.name
        for service in fd.services_by_name.values():
            symbols[package + service.name] = fd.name
        for dep in fd.dependencies:
            add_file(dep)

    listed = list(services)
    for service in listed:
        try:
            add_file(pool.FindServiceByName(service).file)
        except KeyError:
            continue
    return {"services": listed, "files": files, "symbols": symbols, "deps": deps}


def start(config: Mapping[str, Any]) -> "_native.Router":
    return _native.start(json.dumps(config))


class NativeStats:
    """The native core's counters with RouterStats's reading interface."""

    def __init__(self, router: "_native.Router") -> None:
        self._router = router
        self._last: dict[str, dict[str, dict[str, Any]]] = {}

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The "stats" part of the router record (the last reading once the core stopped)."""
        try:
            self._last = json.loads(self._router.counters())
        except RuntimeError:  # stopped: the counters as last read
            pass
        return self._last

    def rows(self) -> list[tuple[str, str, VariantStats]]:
        out = []
        for slug, variants in self.snapshot().items():
            for name, counts in variants.items():
                row = VariantStats(counts.get("model_id", ""))
                for key, value in counts.items():
                    if key in VariantStats.__slots__ and key != "model_id":
                        setattr(row, key, dict(value) if isinstance(value, dict) else
                                list(value) if isinstance(value, list) else value)
                out.append((slug, name, row))
        return out

    def forget(self, slug: str) -> None:
        """The core forgets a deleted deployment's counters itself."""

    def settle(self) -> None:
        """Counts are atomics in the core: nothing deferred."""
