"""Follow the deployments and models in etcd and keep an immutable routing table current.

One background task: read a full snapshot of {prefix}/models/ and {prefix}/deployments/ at
one revision, then watch from the next revision. Each watch batch (etcd never splits a
revision across batches) is applied as a whole: the parsed resources are updated, the
routing table rebuilt and swapped in with one assignment, so a reader sees the config of
one revision or the next, never a mix. When etcd is unreachable the last table stays and
the task reconnects with capped exponential backoff, resuming from the last revision seen
+ 1; when that revision was compacted it reloads the snapshot.

Two watches on one stream, one per prefix (SPEC section 6: routers watch deployments and
models, not history or idempotency records, which lie between and beside them); etcd sends
one stream's changes in revision order. Each resumes from the last revision seen for its
own prefix + 1, so nothing is missed or applied twice after a break.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

from dataplane.applied import AppliedVersions
from dataplane.routing import DeploymentRoute, RouteMap, RoutingTable, build_route
from tsplit.etcd import Etcd, EtcdError, EtcdUnavailable, Event, KeyValue, WatchBatch, WatchCompacted, prefix_range_end
from tsplit.layout import Layout
from tsplit.resources import Deployment, Model, loads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncSettings:
    backoff_start_s: float = 0.05
    backoff_cap_s: float = 1.0


class Backoff:
    """Capped exponential delays with jitter: start, 2*start, ... up to cap, each scaled by a
    random factor in [0.5, 1] so that many routers do not reconnect in lockstep."""

    def __init__(self, start_s: float, cap_s: float, rng: Callable[[], float] = random.random):
        if not 0 < start_s <= cap_s:
            raise ValueError("backoff needs 0 < start <= cap")
        self.start_s, self.cap_s, self._rng = start_s, cap_s, rng
        self._attempt = 0

    def next(self) -> float:
        base = min(self.cap_s, self.start_s * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return base * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self._attempt = 0


class RouteChange(NamedTuple):
    """One deployment's route in a new table: old and new (None: not routed)."""
    slug: str
    old: DeploymentRoute | None
    new: DeploymentRoute | None


class RouteBook:
    """The parsed deployments and models and the route built from each deployment.

    A change rebuilds only the routes it touches: a deployment's own, or, for a model, the
    routes of the deployments that name it. table() then wraps the routes in a new
    immutable RoutingTable. ConfigSync's task is the only writer.
    """

    def __init__(self, rng: Callable[[], float] = random.random):
        self.models: dict[str, Model] = {}
        self.deployments: dict[str, Deployment] = {}
        self._rng = rng
        self._routes = RouteMap()   # immutable: each table() makes the next one
        self._problems: dict[str, list[str]] = {}
        self._users: dict[str, set[str]] = {}   # model_id -> slugs of deployments naming it
        self._dirty: set[str] = set()
        self.rebuilt: frozenset[str] = frozenset()   # the slugs the last table() rebuilt

    @staticmethod
    def _model_ids(deployment: Deployment) -> set[str]:
        return {deployment.champion_model_id, *(c.model_id for c in deployment.challengers)}

    def put_deployment(self, deployment: Deployment) -> bool:
        slug = deployment.deployment_id
        old = self.deployments.get(slug)
        if old == deployment:
            return False
        if old is not None:
            self._forget_users(slug, old)
        self.deployments[slug] = deployment
        for model_id in self._model_ids(deployment):
            self._users.setdefault(model_id, set()).add(slug)
        self._dirty.add(slug)
        return True

    def delete_deployment(self, slug: str) -> bool:
        old = self.deployments.pop(slug, None)
        if old is None:
            return False
        self._forget_users(slug, old)
        self._dirty.add(slug)
        return True

    def _forget_users(self, slug: str, deployment: Deployment) -> None:
        for model_id in self._model_ids(deployment):
            users = self._users.get(model_id)
            if users is not None:
                users.discard(slug)
                if not users:
                    del self._users[model_id]

    def put_model(self, model: Model) -> bool:
        if self.models.get(model.model_id) == model:
            return False
        self.models[model.model_id] = model
        self._dirty.update(self._users.get(model.model_id, ()))
        return True

    def delete_model(self, model_id: str) -> bool:
        if self.models.pop(model_id, None) is None:
            return False
        self._dirty.update(self._users.get(model_id, ()))
        return True

    def table(self, revision: int) -> RoutingTable:
        """Rebuild the routes changed since the last call; the table of every route."""
        changes: dict[str, DeploymentRoute | None] = {}
        for slug in self._dirty:
            deployment = self.deployments.get(slug)
            try:
                route, problems = build_route(deployment, self.models, self._rng) if deployment else (None, [])
            except ValueError as err:  # a config the routing core refuses: keep the last good route
                route, problems = self._routes.get(slug), [f"deployment {slug}: {err}; keeping its last good route"]
            changes[slug] = route
            if problems:
                self._problems[slug] = problems
                for problem in problems:
                    log.warning("routing: %s", problem)
            else:
                self._problems.pop(slug, None)
        self._routes = self._routes.updated(changes)
        self.rebuilt, self._dirty = frozenset(self._dirty), set()
        problems = tuple(p for slug_problems in self._problems.values() for p in slug_problems)
        return RoutingTable(revision, self._routes, problems)


def parse_deployment(slug: str, raw: bytes) -> Deployment:
    deployment = Deployment.from_json(loads(raw))
    if deployment.deployment_id != slug:
        raise ValueError(f"deployment_id {deployment.deployment_id!r} differs from its key")
    return deployment


def parse_model(model_id: str, raw: bytes) -> Model:
    model = Model.from_json(loads(raw))
    if model.model_id != model_id:
        raise ValueError(f"model_id {model.model_id!r} differs from its key")
    return model


_PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError)


class ConfigSync:
    """The current routing table of one router (or proxyless client), kept in sync with etcd.

    `table` is None until the first snapshot is applied, then always a complete table;
    `ready` is set at that moment. `on_table` is called with every new table, right after
    it is swapped in; `on_changes` (before on_table) with the table and the routes that
    differ from the previous table's, so that a listener does O(changed) work. `applied`
    is the slug -> cache_version map of the current table, updated per change.
    """

    def __init__(
        self,
        etcd: Etcd,
        layout: Layout,
        on_table: Callable[[RoutingTable], None] | None = None,
        settings: SyncSettings = SyncSettings(),
        rng: Callable[[], float] = random.random,
        on_changes: Callable[[RoutingTable, tuple[RouteChange, ...]], None] | None = None,
    ):
        self._etcd, self._layout, self._on_table, self._settings = etcd, layout, on_table, settings
        self._on_changes = on_changes
        self._rng = rng
        self._book = RouteBook(rng)
        self._task: asyncio.Task | None = None
        self.table: RoutingTable | None = None
        self.applied = AppliedVersions()
        self.ready = asyncio.Event()
        self.revision = 0
        # For metrics and tests: full snapshots loaded, times the watch broke, tables built.
        self.snapshots = 0
        self.watch_failures = 0
        self.tables_built = 0
        self.swapped_at = 0.0   # perf_counter time of the last swap
        self._prefixes = (layout.models, layout.deployments)
        self._seen = [0, 0]  # per prefix: every change up to this revision is applied

    async def start(self) -> None:
        """Start following etcd in the background; returns at once (await `ready`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="config-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def applied_versions(self) -> dict[str, int]:
        """slug -> cache_version of every deployment the current table routes."""
        return self.applied.to_dict()

    async def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_start_s, self._settings.backoff_cap_s)
        need_snapshot = True
        while True:
            try:
                if need_snapshot:
                    await self._load_snapshot()
                    need_snapshot = False
                    backoff.reset()
                ranges = [(prefix, prefix_range_end(prefix), seen + 1)
                          for prefix, seen in zip(self._prefixes, self._seen)]
                async for index, batch in self._etcd.watch_ranges(ranges):
                    received = time.perf_counter()
                    self._seen[index] = max(self._seen[index], batch.seen_revision)
                    self._apply_batch(batch)
                    backoff.reset()
                    if self.swapped_at >= received and log.isEnabledFor(logging.DEBUG):
                        # perf_counter is CLOCK_MONOTONIC: the bench compares it across processes
                        log.debug("config revision %d: batch read at %.6f, swapped at %.6f",
                                  batch.seen_revision, received, self.swapped_at)
            except WatchCompacted as err:
                log.warning("config watch: revision %d compacted (up to %d); reloading the snapshot",
                            min(self._seen) + 1, err.compact_revision)
                need_snapshot = True
            except EtcdError as err:  # EtcdUnavailable and any other etcd error: retry
                self.watch_failures += 1
                delay = backoff.next()
                level = logging.WARNING if isinstance(err, EtcdUnavailable) else logging.ERROR
                log.log(level, "config watch: %s; keeping the table of revision %d, retrying in %.0f ms",
                        err, self.revision, delay * 1000)
                await asyncio.sleep(delay)
            except Exception:  # a bug must not stop the router following etcd: log it, reload
                self.watch_failures += 1
                delay = backoff.next()
                log.exception("config watch failed unexpectedly; keeping the table of revision %d, "
                              "reloading the snapshot in %.0f ms", self.revision, delay * 1000)
                need_snapshot = True
                await asyncio.sleep(delay)

    async def _load_snapshot(self) -> None:
        (model_kvs, deployment_kvs), revision = await self._etcd.get_prefixes(
            [self._layout.models, self._layout.deployments])
        old, book = self._book, RouteBook(self._rng)
        for model in self._parse_all(model_kvs, self._layout.models, parse_model, old.models):
            book.put_model(model)
        for deployment in self._parse_all(deployment_kvs, self._layout.deployments, parse_deployment,
                                          old.deployments):
            book.put_deployment(deployment)
        self._book = book
        self._seen = [revision, revision]
        self.snapshots += 1
        self._swap(revision, also_changed=self.table.routes.keys() if self.table is not None else ())
        log.info("config snapshot at revision %d: %d deployments, %d models",
                 revision, len(book.deployments), len(book.models))

    @staticmethod
    def _parse_all(kvs: list[KeyValue], prefix: str, parse, last_good: Mapping) -> list:
        """Parse every value; one that does not parse keeps its last good value, if any."""
        parsed = []
        for kv in kvs:
            name = kv.key[len(prefix):]
            if "/" in name:
                continue
            try:
                parsed.append(parse(name, kv.value))
            except _PARSE_ERRORS as err:
                log.error("ignoring %s at revision %d: %s", kv.key, kv.mod_revision, err)
                if name in last_good:
                    parsed.append(last_good[name])
        return parsed

    def _apply_batch(self, batch: WatchBatch) -> None:
        changed = False
        for event in batch.events:
            changed |= self._apply_event(event)
        revision = max(self.revision, batch.seen_revision)
        if changed:
            self._swap(revision)
        else:
            self.revision = revision

    def _apply_event(self, event: Event) -> bool:
        """Update the book from one event; True if the config changed."""
        layout, book = self._layout, self._book
        if event.key.startswith(layout.deployments):
            prefix, parse, put, delete = layout.deployments, parse_deployment, book.put_deployment, book.delete_deployment
        elif event.key.startswith(layout.models):
            prefix, parse, put, delete = layout.models, parse_model, book.put_model, book.delete_model
        else:
            return False
        name = event.key[len(prefix):]
        if "/" in name:
            return False
        if event.kind == "delete":
            return delete(name)
        try:
            resource = parse(name, event.value)
        except _PARSE_ERRORS as err:
            log.error("ignoring %s at revision %d, keeping the last good value: %s",
                      event.key, event.mod_revision, err)
            return False
        return put(resource)

    def _swap(self, revision: int, also_changed=()) -> None:
        """Build and swap in the new table; also_changed: slugs to compare besides those the
        book rebuilt (after a snapshot reload, the old table's, some of which may be gone)."""
        previous = self.table.routes if self.table is not None else {}
        table = self._book.table(revision)
        changes = tuple(RouteChange(slug, previous.get(slug), table.routes.get(slug))
                        for slug in self._book.rebuilt.union(also_changed)
                        if previous.get(slug) is not table.routes.get(slug))
        for change in changes:
            if change.new is None:
                self.applied.discard(change.slug)
            else:
                self.applied.set(change.slug, change.new.cache_version)
        self.table = table
        self.swapped_at = time.perf_counter()
        self.revision = revision
        self.tables_built += 1
        self.ready.set()
        if self._on_changes is not None:
            try:
                self._on_changes(table, changes)
            except Exception:  # a listener's bug must not stop the sync
                log.exception("on_changes callback failed")
        if self._on_table is not None:
            try:
                self._on_table(table)
            except Exception:  # a listener's bug must not stop the sync
                log.exception("on_table callback failed")
