"""The control plane's etcd store: models and deployments of each org, versioned.

Every write is ONE etcd transaction that compares what it read (the deployment key's
mod_revision, the idempotency record's) and puts the new config, its history version and
the idempotency record together; a lost race is re-read, re-validated and retried, so
several control-plane replicas can write at once. Another org's resources answer "not
found" exactly as missing ones do.

Changes of deployments are group-committed (controlplane.group_commit): queued changes,
of one deployment or several, are validated in order and written in one transaction, each
with its own version, history entry, idempotency record and answer. Registrations,
creations and deletions are written one by one.

Idempotency records live at layout.request(scope, request_id), lease-bound
(settings.idempotency_ttl_s, 24 h by default), built by controlplane.records: a committed
one holds what a retry must answer; an "aborted" one is a fence (see _resolve_lost_write)
and counts as absent.

etcd's errors never surface as 500: unreachable, no leader or too slow answers 503
unavailable (or commit_unknown for a write whose answer was lost), out of space or an
over-size request 503 storage_full, any other refusal 503 unavailable; nothing is written
in each of those cases but commit_unknown.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

from aetcd.rpc import rpc_pb2 as etcd_pb

from controlplane.actions import check_champion_registered
from controlplane.change_batch import (
    ChangeResult, Mutate, Mutation, PendingChange, check_precondition, deployment_not_found,
)
from controlplane.group_commit import STORAGE_FULL, GroupCommit, LostRace
from controlplane.models_cache import ModelsCache
from controlplane.records import (
    ABSENT, DEFAULT_IDEMPOTENCY_TTL_S, Record, RecordLease, change_result, fence_value, history_value, record_value,
    same_request,
)
from tsplit import router_record
from tsplit.errors import ApiError
from tsplit.etcd import (
    Etcd, EtcdError, EtcdLeaseNotFound, EtcdStorageFull, EtcdUnavailable, KeyValue, delete_op, get_op, key_missing,
    mod_revision_is, prefix_range_end, put_op,
)
from tsplit.layout import Layout
from tsplit.resources import Deployment, Model, dumps, loads

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, as the gateway's Idempotency-Key

__all__ = ["ChangeResult", "ControlPlaneStore", "HistoryEntry", "Mutate", "Mutation", "StoreSettings",
           "check_request_id", "new_request_id", "utc_now_text"]


@dataclass(frozen=True)
class StoreSettings:
    retry_deadline_s: float = 10.0  # lost races are retried until then
    resolve_deadline_s: float = 5.0  # after a lost answer: time to learn whether it committed
    read_timeout_s: float = 4.0  # a read while etcd is down answers 503 within this
    write_timeout_s: float = 3.0
    backoff_s: float = 0.004  # first retry waits up to this (jittered), doubling
    max_backoff_s: float = 0.1
    max_batch: int = 32  # changes group-committed in one transaction (etcd allows 128 compares and 128 puts)
    max_txn_bytes: int = 1_000_000  # etcd refuses requests over 1.5 MiB by default
    # Batches in flight at once (each of other deployments). One: etcd group-commits
    # concurrent transactions itself, so more workers only made smaller batches (16 clients
    # on own deployments: 1.68 -> 1.07 ms of control-plane CPU and 1.26 -> 0.58 ms of etcd
    # CPU per PATCH going from 4 to 1).
    max_concurrent_batches: int = 1
    linger_s: float = 0.004  # after a batch of several changes, wait this long at most for as many (group_commit)
    idempotency_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S  # idempotency records are kept this long (a lease)
    max_history_page: int = 1000  # versions one history read answers at most


@dataclass(frozen=True)
class HistoryEntry:
    cache_version: int
    action: str
    actor: str
    at: str
    config: Deployment
    request: dict[str, Any]
    request_id: str
    evidence: dict[str, Any] | None = None  # a guardrail decision's


def utc_now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_request_id(request_id: str) -> str:
    """The caller's idempotency key, or a new one when empty."""
    if not request_id:
        return new_request_id()
    if not _REQUEST_ID.fullmatch(request_id):
        raise ApiError(
            "invalid_request",
            "request_id (Idempotency-Key) must be 1 to 128 visible ASCII characters")
    return request_id


def _request_key(layout: Layout, scope: str, request_id: str) -> str:
    """The record's key; the id is percent-encoded so that it stays one path segment."""
    return layout.request(scope, quote(request_id, safe=""))


def _org_scope(org_id: str, kind: str) -> str:
    """Idempotency scope of creations, per org (a slug or model id is not known yet)."""
    return f"org:{quote(org_id, safe='')}:{kind}"


def _model_scope(org_id: str, model_id: str) -> str:
    """Idempotency scope of changes to one model."""
    return _org_scope(org_id, f"model:{model_id}")


def _unchanged_since(prefix: str, revision: int) -> etcd_pb.Compare:
    """No key under prefix was created or modified after revision."""
    return etcd_pb.Compare(
        key=prefix.encode(), range_end=prefix_range_end(prefix), target=etcd_pb.Compare.MOD,
        result=etcd_pb.Compare.LESS, mod_revision=revision + 1)


def model_not_found(model_id: str) -> ApiError:
    return ApiError("model_not_found", f"model {model_id!r} not found")


def _users_of(model_id: str, deployments: list[Deployment]) -> list[str]:
    """What names model_id: "dep_x (champion)", "dep_y (challenger ch_z)"."""
    uses = []
    for d in deployments:
        if d.champion_model_id == model_id:
            uses.append(f"{d.deployment_id} (champion)")
        uses.extend(f"{d.deployment_id} (challenger {c.id})" for c in d.active_challengers if c.model_id == model_id)
    return uses


def _record_of(kv: KeyValue | None) -> Record:
    return Record.from_bytes(kv.mod_revision, kv.value) if kv is not None else ABSENT


def _etcd_refused(err: EtcdError) -> ApiError:
    """The answer for an etcd error that is not "unreachable": nothing was written."""
    if isinstance(err, EtcdStorageFull):
        return STORAGE_FULL
    log.error("etcd refused a request: %s", err)
    return ApiError("unavailable", "etcd refused the request; nothing was written, retry later")


class ControlPlaneStore:
    def __init__(
        self, etcd: Etcd, layout: Layout, settings: StoreSettings = StoreSettings(),
        clock: Callable[[], str] = utc_now_text,
    ):
        self.etcd = etcd
        self.layout = layout
        self.settings = settings
        self.clock = clock
        self._models = ModelsCache(etcd, layout)
        self._listed: dict[str, tuple[int, Deployment]] = {}  # list_deployments: key -> (mod_revision, parsed)
        self._record_lease = RecordLease(etcd.lease_grant, settings.idempotency_ttl_s)
        self._group = GroupCommit(etcd, layout, settings, clock, self._models, self._read, self._resolve_lost_write,
                                  self._record_lease)

    # Reads.

    def _timeout(self, cap: float, deadline: float | None) -> float:
        """cap, or less when the operation's deadline (loop time) comes first."""
        if deadline is None:
            return cap
        return max(0.0, min(cap, deadline - asyncio.get_running_loop().time()))

    async def _read(self, call: Awaitable[Any], deadline: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(call, self._timeout(self.settings.read_timeout_s, deadline))
        except (EtcdUnavailable, asyncio.TimeoutError):
            raise ApiError("unavailable", "etcd is unreachable; nothing was written, retry later") from None
        except EtcdError as err:
            raise _etcd_refused(err) from None

    async def _get(self, key: str, deadline: float | None = None) -> KeyValue | None:
        return await self._read(self.etcd.get(key), deadline)

    async def _get_prefix(self, prefix: str, deadline: float | None = None) -> list[KeyValue]:
        kvs, _ = await self._read(self.etcd.get_prefix(prefix), deadline)
        return kvs

    async def get_model(self, org_id: str, model_id: str) -> Model:
        kv = await self._get(self.layout.model(model_id)) if model_id else None
        model = Model.from_json(loads(kv.value)) if kv else None
        if model is None or model.org_id != org_id:
            raise model_not_found(model_id)
        return model

    async def list_models(self, org_id: str, deadline: float | None = None) -> list[Model]:
        models = (Model.from_json(loads(kv.value)) for kv in await self._get_prefix(self.layout.models, deadline))
        return [m for m in models if m.org_id == org_id]

    async def org_models(self, org_id: str, deadline: float | None = None) -> dict[str, Model]:
        return {m.model_id: m for m in await self.list_models(org_id, deadline)}

    async def _read_deployment(
        self, org_id: str, slug: str, deadline: float | None = None,
    ) -> tuple[Deployment, KeyValue] | None:
        kv = await self._get(self.layout.deployment(slug), deadline) if slug else None
        if kv is None:
            return None
        deployment = Deployment.from_json(loads(kv.value))
        return (deployment, kv) if deployment.org_id == org_id else None

    async def get_deployment(self, org_id: str, slug: str) -> Deployment:
        found = await self._read_deployment(org_id, slug)
        if found is None:
            raise deployment_not_found(slug)
        return found[0]

    async def list_deployments(self, org_id: str) -> list[Deployment]:
        """The org's deployments, read fresh from etcd; a value unchanged since the last
        list (the same mod_revision) is not parsed again (10,000 deployments: ~0.5 s of
        parsing per list otherwise)."""
        parsed: dict[str, tuple[int, Deployment]] = {}
        out = []
        for kv in await self._get_prefix(self.layout.deployments):
            known = self._listed.get(kv.key)
            deployment = known[1] if known is not None and known[0] == kv.mod_revision else Deployment.from_json(
                loads(kv.value))
            parsed[kv.key] = (kv.mod_revision, deployment)
            if deployment.org_id == org_id:
                out.append(deployment)
        self._listed = parsed  # every org's: deleted deployments drop out
        return out

    async def _owns_slug(self, org_id: str, slug: str) -> bool:
        """The deployment, live or deleted, belongs to org_id."""
        if await self._read_deployment(org_id, slug) is not None:
            return True
        tombstone = await self._get(self.layout.tombstone(slug)) if slug else None
        return tombstone is not None and loads(tombstone.value).get("org_id") == org_id

    async def history(self, org_id: str, slug: str) -> list[HistoryEntry]:
        """Every version, oldest first, page by page (ops and tests; the API answers pages)."""
        entries: list[HistoryEntry] = []
        more = True
        while more:
            page, more = await self.history_page(org_id, slug, after=entries[-1].cache_version if entries else 0)
            entries += page
        return entries

    async def history_page(
        self, org_id: str, slug: str, after: int = 0, limit: int | None = None,
    ) -> tuple[list[HistoryEntry], bool]:
        """The versions after version `after`, oldest first, at most limit of them
        (settings.max_history_page at most), and whether more follow. A deleted
        deployment keeps its history."""
        if after < 0:
            raise ApiError("invalid_request", "after must be a version number, 0 or more")
        page = self.settings.max_history_page
        if limit is not None:
            if limit < 1:
                raise ApiError("invalid_request", "limit must be 1 or more")
            page = min(page, limit)
        if not await self._owns_slug(org_id, slug):
            raise deployment_not_found(slug)
        kvs, more = await self._read(self.etcd.get_range(
            self.layout.history_version(slug, after + 1), self.layout.history(slug), limit=page))
        return [_history_entry(kv) for kv in kvs], more

    async def history_config(self, org_id: str, slug: str, version: int) -> Deployment | None:
        kv = await self._get(self.layout.history_version(slug, version))
        if kv is None:
            return None
        config = Deployment.from_json(loads(kv.value)["config"])
        return config if config.org_id == org_id else None

    async def router_records(self) -> list[dict[str, Any]]:
        return router_record.parse_records(kv.value for kv in await self._get_prefix(self.layout.routers))

    async def etcd_alarms(self) -> list[str]:
        """etcd's raised alarms, each once ("NOSPACE": every write answers storage_full)."""
        return list(dict.fromkeys(await self._read(self.etcd.alarms())))

    async def guardrail_state(self, slug: str) -> dict[str, Any] | None:
        """The guardrail judge's published view of a deployment, None when there is none."""
        kv = await self._get(self.layout.guardrail_state(slug))
        try:
            return loads(kv.value) if kv is not None else None
        except ValueError:
            return None

    # Writes. Each takes deadline_s, the most it may take in all (the caller's gRPC deadline);
    # settings.retry_deadline_s caps it. Every etcd call ends by that deadline, so the answer
    # (commit_unknown at worst) always comes before the caller gives up.

    def _deadline(self, deadline_s: float | None) -> float:
        budget = self.settings.retry_deadline_s
        if deadline_s is not None:
            budget = min(budget, deadline_s)
        return asyncio.get_running_loop().time() + budget

    async def register_model(
        self, org_id: str, model: Model, *, actor: str, request_id: str, request_body: dict[str, Any],
        deadline_s: float | None = None,
    ) -> Model:
        if model.org_id != org_id:
            raise ValueError("a model is registered in the caller's org")
        request_key = _request_key(self.layout, _org_scope(org_id, "models"), request_id)
        model_key = self.layout.model(model.model_id)

        async def attempt(deadline: float) -> Model:
            record = await self._record(request_key, org_id, "register_model", request_body, deadline)
            if record.value:
                return Model.from_json(record.value["result"])
            compares = [key_missing(model_key), mod_revision_is(request_key, record.mod_revision)]
            ops = [
                put_op(model_key, dumps(model.to_json())),
                await self._record_op(request_key, org_id, "register_model", request_id, request_body, model.to_json(),
                                      deadline),
            ]
            replay = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return Model.from_json(replay["result"]) if replay else model

        async def explain_conflict(deadline: float) -> None:
            if await self._get(model_key, deadline) is not None:
                raise ApiError("already_exists", f"model_id {model.model_id!r} already exists")

        return await self._retry(attempt, self._deadline(deadline_s), explain_conflict)

    async def _read_model(self, org_id: str, model_id: str, deadline: float) -> tuple[Model, KeyValue] | None:
        kv = await self._get(self.layout.model(model_id), deadline)
        model = Model.from_json(loads(kv.value)) if kv else None
        return (model, kv) if model is not None and model.org_id == org_id else None

    async def update_model(
        self, org_id: str, model_id: str, change: Callable[[Model], Model], *, actor: str, request_id: str,
        request_body: dict[str, Any], authorize: Callable[[], None] = lambda: None, deadline_s: float | None = None,
    ) -> Model:
        """PATCH a model: change(current) is the new model (it validates, 422). Checks in
        order: the model is the org's (404), authorize() (403), change (422). Routers follow
        the model key, so every deployment naming it routes to the new endpoint."""
        request_key = _request_key(self.layout, _model_scope(org_id, model_id), request_id)

        async def attempt(deadline: float) -> Model:
            found = await self._read_model(org_id, model_id, deadline)
            if found is None:
                raise model_not_found(model_id)
            current, kv = found
            record = await self._record(request_key, org_id, "update_model", request_body, deadline, authorize)
            if record.value:
                return Model.from_json(record.value["result"])
            authorize()
            updated = change(current)
            if updated == current:
                return current
            compares = [mod_revision_is(kv.key, kv.mod_revision), mod_revision_is(request_key, record.mod_revision)]
            ops = [
                put_op(kv.key, dumps(updated.to_json())),
                await self._record_op(request_key, org_id, "update_model", request_id, request_body,
                                      updated.to_json(), deadline),
            ]
            replay = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return Model.from_json(replay["result"]) if replay else updated

        return await self._retry(attempt, self._deadline(deadline_s))

    async def delete_model(
        self, org_id: str, model_id: str, *, actor: str, request_id: str,
        authorize: Callable[[], None] = lambda: None, deadline_s: float | None = None,
    ) -> str:
        """Remove a model no deployment names as champion or active challenger (else 409
        model_in_use). The transaction also compares that no deployment changed since they
        were read, so a deployment that starts using the model meanwhile makes it retry."""
        request_key = _request_key(self.layout, _model_scope(org_id, model_id), request_id)

        async def attempt(deadline: float) -> str:
            found = await self._read_model(org_id, model_id, deadline)
            record = await self._record(request_key, org_id, "delete_model", {}, deadline, authorize)
            if record.value:
                return record.value["result"]["model_id"]
            if found is None:
                raise model_not_found(model_id)
            _, kv = found
            authorize()
            kvs, revision = await self._read(self.etcd.get_prefix(self.layout.deployments), deadline)
            deployments = [Deployment.from_json(loads(d.value)) for d in kvs]
            uses = _users_of(model_id, [d for d in deployments if d.org_id == org_id])
            if uses:
                raise ApiError(
                    "model_in_use", f"model {model_id!r} is used by {', '.join(uses)}; "
                    "remove it from those deployments (or delete them) first")
            compares = [mod_revision_is(kv.key, kv.mod_revision), mod_revision_is(request_key, record.mod_revision),
                        _unchanged_since(self.layout.deployments, revision)]
            ops = [
                delete_op(kv.key),
                await self._record_op(request_key, org_id, "delete_model", request_id, {}, {"model_id": model_id},
                                      deadline),
            ]
            await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return model_id

        deleted = await self._retry(attempt, self._deadline(deadline_s))
        try:  # this replica's table forgets the model now (others on their next refresh)
            await self._read(self._models.refresh())
        except ApiError:
            pass
        return deleted

    async def create_deployment(
        self, org_id: str, deployment_id: str, champion_model_id: str, *,
        actor: str, request_id: str, request_body: dict[str, Any], deadline_s: float | None = None,
    ) -> Deployment:
        request_key = _request_key(self.layout, _org_scope(org_id, "deployments"), request_id)
        key, tombstone = self.layout.deployment(deployment_id), self.layout.tombstone(deployment_id)

        async def attempt(deadline: float) -> Deployment:
            record = await self._record(request_key, org_id, "create", request_body, deadline)
            if record.value:
                return Deployment.from_json(record.value["result"])
            await explain_conflict(deadline)
            check_champion_registered(champion_model_id, await self.org_models(org_id, deadline))
            now = self.clock()
            deployment = Deployment(
                deployment_id, org_id, champion_model_id, cache_version=1, updated_at=now, updated_by=actor)
            compares = [key_missing(key), key_missing(tombstone), mod_revision_is(request_key, record.mod_revision)]
            ops = [
                put_op(key, dumps(deployment.to_json())),
                put_op(self.layout.history_version(deployment_id, 1), history_value(
                    deployment, action="create", actor=actor, at=now, request=request_body, request_id=request_id)),
                await self._record_op(request_key, org_id, "create", request_id, request_body, deployment.to_json(),
                                      deadline),
            ]
            replay = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return Deployment.from_json(replay["result"]) if replay else deployment

        async def explain_conflict(deadline: float) -> None:
            if await self._get(key, deadline) is not None or await self._get(tombstone, deadline) is not None:
                raise ApiError("already_exists", f"deployment_id {deployment_id!r} exists or existed")

        return await self._retry(attempt, self._deadline(deadline_s), explain_conflict)

    async def create_by_apply(
        self, org_id: str, slug: str, build: Callable[[Deployment, Mapping[str, Model]], Deployment], *,
        actor: str, request_id: str, request_body: dict[str, Any], authorize: Callable[[], None] = lambda: None,
        deadline_s: float | None = None,
    ) -> ChangeResult | None:
        """apply on a slug that never existed: create it as version 1 in the desired state
        build(fresh deployment with the desired champion, the org's models) returns (422 on
        a bad body). Its idempotency record is the slug's "apply" record, so a retry answers
        it whether or not the deployment exists by then. None: the deployment exists (it
        was just created by someone else); apply changes it instead. A deleted slug is
        never reused (409 already_exists)."""
        request_key = _request_key(self.layout, slug, request_id)
        key, tombstone = self.layout.deployment(slug), self.layout.tombstone(slug)

        async def replay(record: Record, deadline: float) -> ChangeResult:
            kv = await self._get(self.layout.history_version(slug, record.change_version or 1), deadline)
            if kv is None:
                raise ApiError("internal", "the version this request wrote is missing from history")
            return ChangeResult(Deployment.from_json(loads(kv.value)["config"]), True, replayed=True)

        async def attempt(deadline: float) -> ChangeResult | None:
            record = await self._record(request_key, org_id, "apply", request_body, deadline, authorize)
            if record.value:
                return await replay(record, deadline)
            live = await self._get(key, deadline)
            if live is not None:
                if Deployment.from_json(loads(live.value)).org_id != org_id:
                    raise deployment_not_found(slug)
                return None
            if await self._get(tombstone, deadline) is not None:
                raise ApiError("already_exists", f"deployment {slug!r} was deleted; a slug is never reused")
            authorize()
            models = await self.org_models(org_id, deadline)
            now = self.clock()
            deployment = replace(build(Deployment(slug, org_id, "", cache_version=1), models),
                                 cache_version=1, updated_at=now, updated_by=actor)
            check_champion_registered(deployment.champion_model_id, models)
            compares = [key_missing(key), key_missing(tombstone), mod_revision_is(request_key, record.mod_revision)]
            ops = [
                put_op(key, dumps(deployment.to_json())),
                put_op(self.layout.history_version(slug, 1), history_value(
                    deployment, action="apply", actor=actor, at=now, request=request_body, request_id=request_id)),
                await self._record_op(request_key, org_id, "apply", request_id, request_body,
                                      change_result(slug, 1, None), deadline),
            ]
            replayed = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            if replayed:
                return await replay(Record.of(0, replayed), deadline)
            return ChangeResult(deployment, changed=True)

        return await self._retry(attempt, self._deadline(deadline_s))

    async def change_deployment(
        self, org_id: str, slug: str, mutate: Mutate, *, action: str, request_body: dict[str, Any],
        actor: str, request_id: str, expected_cache_version: int | None = None,
        authorize: Callable[[], None] = lambda: None, deadline_s: float | None = None, solo: bool = False,
        evidence: dict[str, Any] | None = None,
    ) -> ChangeResult:
        """Apply mutate to the current deployment as one new version.

        Checks in order: an earlier request with this request_id (its answer), the
        deployment is the org's (404), authorize() (403), expected_cache_version (409),
        mutate, which validates against the state the change is applied to (422). A
        mutation that changes nothing writes nothing and answers the current version.
        The change is group-committed (controlplane.group_commit): it may share its
        transaction with other changes (solo: first of its deployment's changes in the
        transaction, for a mutate that reads committed history). evidence (a guardrail
        decision's) is kept in the version's history entry.
        """
        loop = asyncio.get_running_loop()
        change = PendingChange(
            org_id, slug, mutate, action, request_body, actor, request_id, _request_key(self.layout, slug, request_id),
            expected_cache_version, authorize, self._deadline(deadline_s), solo,
            read_by=loop.time() + self.settings.read_timeout_s, evidence=evidence)
        return await self._group.submit(change)

    async def delete_deployment(
        self, org_id: str, slug: str, *, actor: str, request_id: str,
        expected_cache_version: int | None = None, authorize: Callable[[], None] = lambda: None,
        deadline_s: float | None = None,
    ) -> str:
        """Remove the deployment key, keep its history and leave a tombstone."""
        request_key = _request_key(self.layout, slug, request_id)

        async def attempt(deadline: float) -> str:
            found = await self._read_deployment(org_id, slug, deadline)
            record = await self._record(request_key, org_id, "delete", {}, deadline, authorize)
            if record.value:
                return record.value["result"]["deployment_id"]
            if found is None:
                raise deployment_not_found(slug)
            current, kv = found
            authorize()
            check_precondition(current, expected_cache_version)
            tombstone = {
                "deployment_id": slug, "org_id": org_id, "deleted_at": self.clock(), "deleted_by": actor,
                "last_cache_version": current.cache_version,
            }
            compares = [mod_revision_is(kv.key, kv.mod_revision), mod_revision_is(request_key, record.mod_revision)]
            ops = [
                delete_op(kv.key),
                put_op(self.layout.tombstone(slug), dumps(tombstone)),
                await self._record_op(request_key, org_id, "delete", request_id, {}, {"deployment_id": slug}, deadline),
            ]
            await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return slug

        return await self._retry(attempt, self._deadline(deadline_s))

    # The write machinery.

    async def _record(
        self, key: str, org_id: str, action: str, request_body: dict[str, Any], deadline: float,
        authorize: Callable[[], None] = lambda: None,
    ) -> Record:
        """The idempotency record of this request. Replaying it needs authorize() and the
        same request; another org's record is never answered (it counts as absent)."""
        record = _record_of(await self._get(key, deadline))
        if record.value is None:
            return record
        if record.value.get("org_id") != org_id:
            return Record(record.mod_revision, None)
        authorize()
        if not same_request(record.value, action, request_body):
            raise ApiError(
                "invalid_request",
                "request_id (Idempotency-Key) was already used for a different request; use a new one")
        return record

    async def _record_op(
        self, key: str, org_id: str, action: str, request_id: str, request_body: dict[str, Any],
        result: dict[str, Any], deadline: float,
    ):
        """The put of a committed record, under the records' lease."""
        lease = await self._read(self._record_lease.current(), deadline)
        value = record_value(request_id=request_id, org_id=org_id, action=action, request=request_body,
                             at=self.clock(), result=result)
        return put_op(key, dumps(value), lease)

    async def _retry(
        self, attempt: Callable[[float], Awaitable[Any]], deadline: float,
        explain_conflict: Callable[[float], Awaitable[None]] | None = None,
    ) -> Any:
        """Run attempt until it does not lose a race, with jittered backoff, until the deadline."""
        loop = asyncio.get_running_loop()
        backoff = self.settings.backoff_s
        while True:
            try:
                return await attempt(deadline)
            except LostRace:
                if explain_conflict is not None:
                    await explain_conflict(deadline)
            if loop.time() + backoff >= deadline:
                raise ApiError(
                    "unavailable", "the change could not be made in time (etcd slow or too many concurrent "
                    "changes); nothing was written, retry later")
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, self.settings.max_backoff_s)

    async def _commit(
        self, compares, ops, request_key: str, request_revision: int, deadline: float,
    ) -> dict[str, Any] | None:
        """Run the write transaction. None: it committed. A record: a request with the same
        request_id committed first; answer its result. Raises LostRace when a compare
        failed or the write surely did not commit (then retrying is safe)."""
        timeout = self._timeout(self.settings.write_timeout_s, deadline)
        if timeout <= 0:
            raise ApiError("unavailable", "the change could not be made in time; nothing was written, retry later")
        try:
            result = await asyncio.wait_for(self.etcd.txn(compares, ops), timeout)
        except (EtcdUnavailable, asyncio.TimeoutError):
            log.warning("etcd's answer to a write was lost; finding out whether it committed")
            return await self._resolve_lost_write(request_key, request_revision, deadline)
        except EtcdLeaseNotFound:
            log.warning("etcd no longer knows the idempotency records' lease; granting a new one")
            self._record_lease.forget(ops[-1].request_put.lease)
            raise LostRace() from None
        except EtcdError as err:
            raise _etcd_refused(err) from None
        if not result.succeeded:
            raise LostRace()
        return None

    async def _resolve_lost_write(
        self, request_key: str, request_revision: int, deadline: float, write_id: str | None = None,
    ) -> dict[str, Any]:
        """Decide whether a write whose answer was lost committed, before answering.

        The write compared the request record's mod_revision. A fence txn "if that record is
        still as I read it, put an aborted record" succeeding proves the write never
        committed and never will (its compare now fails); failing means the record was
        written: if it is a committed record this request_id's change is in (answer it),
        else another attempt fenced it and mine cannot commit either. With write_id (a
        batch, whose other changes depend on it), only a record of that very transaction
        counts as committed: one written by another replica for the same request_id means
        this transaction failed its compare.
        """
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.settings.resolve_deadline_s)
        fence = fence_value(self.clock())
        while True:
            timeout = self._timeout(self.settings.write_timeout_s, deadline)
            if timeout <= 0:
                raise ApiError(
                    "commit_unknown",
                    "etcd's answer was lost and the outcome could not be found in time; "
                    "retry with the same request_id (Idempotency-Key) to learn it")
            lease = 0
            try:
                lease = await asyncio.wait_for(self._record_lease.current(), timeout)
                result = await asyncio.wait_for(
                    self.etcd.txn(
                        [mod_revision_is(request_key, request_revision)], [put_op(request_key, fence, lease)],
                        [get_op(request_key)]),
                    timeout)
            except (EtcdUnavailable, asyncio.TimeoutError):
                await asyncio.sleep(min(0.2, self._timeout(0.2, deadline)))
                continue
            except EtcdError as err:  # no room for the fence (or its lease): the record tells, else wait
                if isinstance(err, EtcdLeaseNotFound):
                    self._record_lease.forget(lease)
                try:
                    kv = await asyncio.wait_for(self.etcd.get(request_key), timeout)
                except (EtcdError, asyncio.TimeoutError):
                    kv = None
                value = loads(kv.value) if kv is not None and kv.mod_revision != request_revision else {}
                if "result" in value and (write_id is None or value.get("write_id") == write_id):
                    return value
                await asyncio.sleep(min(0.2, self._timeout(0.2, deadline)))
                continue
            if result.succeeded:
                log.info("the lost write did not commit (fenced); retrying it")
                raise LostRace()
            kvs = result.responses[0].response_range.kvs
            value = loads(kvs[0].value) if kvs else {}
            if "result" in value and (write_id is None or value.get("write_id") == write_id):
                return value
            raise LostRace()


def _history_entry(kv: KeyValue) -> HistoryEntry:
    value = loads(kv.value)
    config = Deployment.from_json(value["config"])
    return HistoryEntry(
        cache_version=config.cache_version, action=value.get("action", ""), actor=value.get("actor", ""),
        at=value.get("at", ""), config=config, request=value.get("request") or {},
        request_id=value.get("request_id", ""), evidence=value.get("evidence"))
