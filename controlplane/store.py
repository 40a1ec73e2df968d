"""The control plane's etcd store: models and deployments of each org, versioned.

Every write is ONE etcd transaction that compares what it read (the deployment key's
mod_revision, the idempotency record's) and puts the new config, its history version and
the idempotency record together; a lost race is re-read, re-validated and retried, so
several control-plane replicas can write at once. Another org's resources answer "not
found" exactly as missing ones do.

Changes of one deployment queue up in this process and are group-committed (see
controlplane.change_batch): one worker per deployment takes every change waiting, validates
them in order and writes all their versions in one transaction. An attempt reads the
deployment key (one get: etcd down or frozen answers "unavailable" before anything is
sent) and, the first time, assumes the batch's idempotency records absent; the transaction
compares them, so a request_id used before only costs a failed compare, then a read of the
records and a retry. The queue saves round trips; correctness rests on the compares alone,
so several replicas may write the same deployment at once.

Idempotency records live at layout.request(scope, request_id). A committed one holds the
result the request produced; an "aborted" one is a fence (see _resolve_lost_write) and
counts as absent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from controlplane.actions import check_champion_registered
from controlplane.change_batch import (
    ABSENT, BatchPlan, ChangeResult, Mutate, Mutation, Outcome, PendingChange, Record, check_precondition,
    deployment_not_found, plan_batch,
)
from controlplane.models_cache import ModelsCache
from tsplit.errors import ApiError
from tsplit.etcd import Etcd, EtcdUnavailable, KeyValue, delete_op, get_op, key_missing, mod_revision_is, put_op
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
    max_batch: int = 32  # changes of one deployment group-committed in one transaction (etcd allows 128 ops)
    max_txn_bytes: int = 1_000_000  # etcd refuses requests over 1.5 MiB by default


@dataclass(frozen=True)
class HistoryEntry:
    cache_version: int
    action: str
    actor: str
    at: str
    config: Deployment
    request: dict[str, Any]
    request_id: str


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


class _LostRace(Exception):
    """A compare of the write failed: someone wrote first."""


class _AnswerLost(Exception):
    """etcd's answer to a batch's write was lost: it may or may not have committed."""

    def __init__(self, plan: BatchPlan, deadline: float):
        super().__init__("etcd's answer to a write was lost")
        self.plan, self.deadline = plan, deadline


class _OutcomeUnknown(Exception):
    """A batch's write lost its answer and whether it committed could not be found in time."""

    def __init__(self, error: ApiError, plan: BatchPlan):
        super().__init__(error.message)
        self.error, self.plan = error, plan

    def answer_for(self, index: int) -> ApiError:
        """commit_unknown for a change the lost write carried; unavailable for the others
        (nothing was written for them, and their verdicts assumed the batch committed)."""
        if self.plan.writes_for(index):
            return self.error
        return ApiError("unavailable", "etcd did not answer in time; nothing was written for this request, retry later")


def _record_of(kv: KeyValue | None) -> Record:
    return Record.of(kv.mod_revision, loads(kv.value)) if kv is not None else ABSENT


def _settle(answer: asyncio.Future, outcome: Outcome) -> None:
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


Waiter = tuple[PendingChange, "asyncio.Future[ChangeResult]"]

_STOPPED = ApiError("commit_unknown", "the control plane stopped while writing; retry with the same "
                                      "request_id (Idempotency-Key) to learn the outcome")


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
        self._queues: dict[str, deque[Waiter]] = {}  # slug -> changes waiting for its worker
        self._workers: set[asyncio.Task] = set()

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

    async def _get(self, key: str, deadline: float | None = None) -> KeyValue | None:
        return await self._read(self.etcd.get(key), deadline)

    async def _get_prefix(self, prefix: str, deadline: float | None = None) -> list[KeyValue]:
        kvs, _ = await self._read(self.etcd.get_prefix(prefix), deadline)
        return kvs

    async def get_model(self, org_id: str, model_id: str) -> Model:
        kv = await self._get(self.layout.model(model_id)) if model_id else None
        model = Model.from_json(loads(kv.value)) if kv else None
        if model is None or model.org_id != org_id:
            raise ApiError("model_not_found", f"model {model_id!r} not found")
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
        deployments = (Deployment.from_json(loads(kv.value)) for kv in await self._get_prefix(self.layout.deployments))
        return [d for d in deployments if d.org_id == org_id]

    async def _owns_slug(self, org_id: str, slug: str) -> bool:
        """The deployment, live or deleted, belongs to org_id."""
        if await self._read_deployment(org_id, slug) is not None:
            return True
        tombstone = await self._get(self.layout.tombstone(slug)) if slug else None
        return tombstone is not None and loads(tombstone.value).get("org_id") == org_id

    async def history(self, org_id: str, slug: str) -> list[HistoryEntry]:
        """Every version, oldest first; a deleted deployment keeps its history."""
        if not await self._owns_slug(org_id, slug):
            raise deployment_not_found(slug)
        return [_history_entry(kv) for kv in await self._get_prefix(self.layout.history(slug))]

    async def history_config(self, org_id: str, slug: str, version: int) -> Deployment | None:
        kv = await self._get(self.layout.history_version(slug, version))
        if kv is None:
            return None
        config = Deployment.from_json(loads(kv.value)["config"])
        return config if config.org_id == org_id else None

    async def router_records(self) -> list[dict[str, Any]]:
        records = []
        for kv in await self._get_prefix(self.layout.routers):
            try:
                records.append(loads(kv.value))
            except ValueError:
                log.warning("router record %s is not JSON; ignored", kv.key)
        return records

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
                put_op(request_key, self._record_value(org_id, "register_model", request_id, request_body, model.to_json())),
            ]
            replay = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return Model.from_json(replay["result"]) if replay else model

        async def explain_conflict(deadline: float) -> None:
            if await self._get(model_key, deadline) is not None:
                raise ApiError("already_exists", f"model_id {model.model_id!r} already exists")

        return await self._retry(attempt, self._deadline(deadline_s), explain_conflict)

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
                put_op(self.layout.history_version(deployment_id, 1),
                       self._history_value(deployment, "create", actor, now, request_body, request_id)),
                put_op(request_key, self._record_value(org_id, "create", request_id, request_body, deployment.to_json())),
            ]
            replay = await self._commit(compares, ops, request_key, record.mod_revision, deadline)
            return Deployment.from_json(replay["result"]) if replay else deployment

        async def explain_conflict(deadline: float) -> None:
            if await self._get(key, deadline) is not None or await self._get(tombstone, deadline) is not None:
                raise ApiError("already_exists", f"deployment_id {deployment_id!r} exists or existed")

        return await self._retry(attempt, self._deadline(deadline_s), explain_conflict)

    async def change_deployment(
        self, org_id: str, slug: str, mutate: Mutate, *, action: str, request_body: dict[str, Any],
        actor: str, request_id: str, expected_cache_version: int | None = None,
        authorize: Callable[[], None] = lambda: None, deadline_s: float | None = None, solo: bool = False,
    ) -> ChangeResult:
        """Apply mutate to the current deployment as one new version.

        Checks in order: an earlier request with this request_id (its answer), the
        deployment is the org's (404), authorize() (403), expected_cache_version (409),
        mutate, which validates against the state the change is applied to (422). A
        mutation that changes nothing writes nothing and answers the current version.
        The change joins this deployment's queue and may be written together with others
        (solo: in a transaction of its own, for a mutate that reads committed history).
        """
        loop = asyncio.get_running_loop()
        change = PendingChange(
            org_id, slug, mutate, action, request_body, actor, request_id, _request_key(self.layout, slug, request_id),
            expected_cache_version, authorize, self._deadline(deadline_s), solo,
            read_by=loop.time() + self.settings.read_timeout_s)
        answer: asyncio.Future[ChangeResult] = loop.create_future()
        self._enqueue(slug, [(change, answer)])
        return await answer

    # The group commit of one deployment's changes.

    def _enqueue(self, slug: str, waiters: list[Waiter], front: bool = False) -> None:
        """Queue changes for the deployment's worker, starting one when there is none."""
        queue = self._queues.get(slug)
        if queue is None:
            queue = self._queues[slug] = deque()
            self._track(self._drain(slug, queue), f"tsplit-changes-{slug}")
        if front:
            queue.extendleft(reversed(waiters))
        else:
            queue.extend(waiters)

    def _track(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _drain(self, slug: str, queue: deque[Waiter]) -> None:
        """The one worker of a deployment: batch after batch until its queue is empty."""
        try:
            while queue:
                batch = self._take(queue)
                if batch:
                    await self._run_batch(slug, batch)
        finally:
            if self._queues.get(slug) is queue:
                del self._queues[slug]
            for _, answer in queue:  # only when the worker itself was cancelled (shutdown)
                if not answer.done():
                    answer.set_exception(ApiError("unavailable", "the control plane is stopping; nothing was written"))

    def _take(self, queue: deque[Waiter]) -> list[Waiter]:
        batch: list[Waiter] = []
        while queue and len(batch) < self.settings.max_batch:
            change, answer = queue[0]
            if answer.done():  # the caller went away before its change was tried
                queue.popleft()
                continue
            if change.solo and batch:
                break
            batch.append(queue.popleft())
            if change.solo:
                break
        return batch

    async def _run_batch(self, slug: str, batch: list[Waiter]) -> None:
        """Attempt the batch until it commits, each change answered; a lost race re-reads."""
        loop = asyncio.get_running_loop()
        read_records = False  # the first attempt assumes the records absent
        backoff = self.settings.backoff_s
        try:
            while True:
                now = loop.time()
                for change, answer in batch:
                    if change.deadline <= now and not answer.done():
                        answer.set_exception(ApiError(
                            "unavailable", "the change could not be made in time (etcd slow or too many concurrent "
                            "changes); nothing was written, retry later"))
                batch = [(change, answer) for change, answer in batch if not answer.done()]
                if not batch:
                    return
                deadline = min(change.deadline for change, _ in batch)
                read_deadline = deadline if read_records else min(deadline, *(c.read_by for c, _ in batch))
                try:
                    plan = await self._attempt(
                        slug, [change for change, _ in batch], read_records, deadline, read_deadline)
                except _AnswerLost as lost:
                    # Found out aside, so that the changes queued behind do not wait for it.
                    self._track(self._settle_lost_batch(slug, batch, lost), f"tsplit-resolve-{slug}")
                    return
                except _LostRace:
                    read_records = True
                    await asyncio.sleep(min(random.uniform(0, backoff), max(0.0, deadline - loop.time())))
                    backoff = min(backoff * 2, self.settings.max_backoff_s)
                    continue
                except ApiError as err:  # etcd unreachable before anything was sent
                    for _, answer in batch:
                        _settle(answer, err)
                    return
                self._answer(slug, batch, plan)
                return
        except Exception as err:  # a bug: its changes answer "internal", the worker goes on
            log.exception("changes of %s failed", slug)
            for _, answer in batch:
                _settle(answer, err)
        except BaseException:  # the worker was cancelled (shutdown) while writing
            for _, answer in batch:
                _settle(answer, _STOPPED)
            raise

    def _answer(self, slug: str, batch: list[Waiter], plan: BatchPlan) -> None:
        """Answer a committed (or write-free) batch; deferred changes go first in the queue."""
        if plan.deferred:
            self._enqueue(slug, batch[-plan.deferred:], front=True)
        for (_, answer), outcome in zip(batch, plan.outcomes):
            _settle(answer, outcome)

    async def _settle_lost_batch(self, slug: str, batch: list[Waiter], lost: _AnswerLost) -> None:
        """Learn whether a batch whose answer was lost committed, then answer its changes,
        or queue them again when it surely did not."""
        key, revision = lost.plan.written_keys[0]
        try:
            await self._resolve_lost_write(key, revision, lost.deadline, write_id=lost.plan.write_id)
        except _LostRace:
            retry = [(dataclasses.replace(change, read_by=float("inf")), answer) for change, answer in batch]
            self._enqueue(slug, retry, front=True)
            return
        except ApiError as err:
            unknown = _OutcomeUnknown(err, lost.plan)
            for index, (_, answer) in enumerate(batch):
                _settle(answer, unknown.answer_for(index))
            return
        except Exception as err:
            log.exception("resolving a lost write of %s failed", slug)
            for _, answer in batch:
                _settle(answer, err)
            return
        except BaseException:
            for index, (_, answer) in enumerate(batch):
                _settle(answer, _OutcomeUnknown(_STOPPED, lost.plan).answer_for(index))
            raise
        self._answer(slug, batch, lost.plan)

    async def _attempt(
        self, slug: str, changes: list[PendingChange], read_records: bool, deadline: float, read_deadline: float,
    ) -> BatchPlan:
        """One try: read the deployment (and the records, when asked), plan, write."""
        state, revision, records = await self._read_batch_state(slug, changes, read_records, read_deadline)
        models_fresh = read_records
        while True:
            plan = await plan_batch(
                self.layout, changes, state, revision, records, self._models.by_id, now=self.clock(),
                write_id=uuid.uuid4().hex, compare_all_records=not read_records,
                max_txn_bytes=self.settings.max_txn_bytes)
            if not plan.model_misses or models_fresh:
                break
            await self._read(self._models.refresh(), deadline)  # "not registered" only on a fresh table
            models_fresh = True
        if plan.writes:
            await self._commit_batch(plan, deadline)
        elif not read_records and not await self._holds(plan.compares, deadline):
            # Answers given without writing rest on records assumed absent: confirmed first.
            raise _LostRace()
        return plan

    async def _read_batch_state(
        self, slug: str, changes: list[PendingChange], read_records: bool, deadline: float,
    ) -> tuple[Deployment | None, int, dict[str, Record]]:
        """The deployment and its key's mod_revision; with read_records also every change's
        idempotency record and the latest models, all read at once."""
        keys = list(dict.fromkeys(change.request_key for change in changes)) if read_records else []
        extra = (self._read(self._models.refresh(), deadline),) if read_records else ()
        found, *rest = await asyncio.gather(
            self._get(self.layout.deployment(slug), deadline), *(self._get(key, deadline) for key in keys), *extra)
        records = {key: _record_of(kv) for key, kv in zip(keys, rest)}
        if found is None:
            return None, 0, records
        return Deployment.from_json(loads(found.value)), found.mod_revision, records

    async def _holds(self, compares: list, deadline: float) -> bool:
        """Whether every compare holds now (a transaction that writes nothing)."""
        try:
            result = await asyncio.wait_for(
                self.etcd.txn(compares, []), self._timeout(self.settings.write_timeout_s, deadline))
        except (EtcdUnavailable, asyncio.TimeoutError):
            raise ApiError("unavailable", "etcd is unreachable; nothing was written, retry later") from None
        return result.succeeded

    async def _commit_batch(self, plan: BatchPlan, deadline: float) -> None:
        """Write the batch. Raises _LostRace when it did not commit, _AnswerLost when its
        answer was lost."""
        timeout = self._timeout(self.settings.write_timeout_s, deadline)
        if timeout <= 0:
            raise ApiError("unavailable", "the change could not be made in time; nothing was written, retry later")
        try:
            result = await asyncio.wait_for(self.etcd.txn(plan.compares, plan.ops), timeout)
        except (EtcdUnavailable, asyncio.TimeoutError):
            log.warning("etcd's answer to a write was lost; finding out whether it committed")
            raise _AnswerLost(plan, deadline) from None
        if not result.succeeded:
            raise _LostRace()

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
                put_op(request_key, self._record_value(org_id, "delete", request_id, {}, {"deployment_id": slug})),
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
        if (record.value.get("action"), record.value.get("request")) != (action, request_body):
            raise ApiError(
                "invalid_request",
                "request_id (Idempotency-Key) was already used for a different request; use a new one")
        return record

    def _record_value(
        self, org_id: str, action: str, request_id: str, request_body: dict[str, Any], result: dict[str, Any],
    ) -> bytes:
        cache_version = result.get("cache_version", (result.get("deployment") or {}).get("cache_version"))
        return dumps({
            "request_id": request_id, "org_id": org_id, "action": action, "request": request_body,
            "cache_version": cache_version, "at": self.clock(), "result": result,
        })

    @staticmethod
    def _history_value(
        config: Deployment, action: str, actor: str, at: str, request_body: dict[str, Any], request_id: str,
    ) -> bytes:
        return dumps({
            "config": config.to_json(), "action": action, "actor": actor, "at": at,
            "request": request_body, "request_id": request_id,
        })

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
            except _LostRace:
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
        request_id committed first; answer its result. Raises _LostRace when a compare
        failed or the write surely did not commit (then retrying is safe)."""
        timeout = self._timeout(self.settings.write_timeout_s, deadline)
        if timeout <= 0:
            raise ApiError("unavailable", "the change could not be made in time; nothing was written, retry later")
        try:
            result = await asyncio.wait_for(self.etcd.txn(compares, ops), timeout)
        except (EtcdUnavailable, asyncio.TimeoutError):
            log.warning("etcd's answer to a write was lost; finding out whether it committed")
            return await self._resolve_lost_write(request_key, request_revision, deadline)
        if not result.succeeded:
            raise _LostRace()
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
        fence = dumps({"aborted": True, "at": self.clock()})
        while True:
            timeout = self._timeout(self.settings.write_timeout_s, deadline)
            if timeout <= 0:
                raise ApiError(
                    "commit_unknown",
                    "etcd's answer was lost and the outcome could not be found in time; "
                    "retry with the same request_id (Idempotency-Key) to learn it")
            try:
                result = await asyncio.wait_for(
                    self.etcd.txn(
                        [mod_revision_is(request_key, request_revision)], [put_op(request_key, fence)],
                        [get_op(request_key)]),
                    timeout)
            except (EtcdUnavailable, asyncio.TimeoutError):
                await asyncio.sleep(min(0.2, self._timeout(0.2, deadline)))
                continue
            if result.succeeded:
                log.info("the lost write did not commit (fenced); retrying it")
                raise _LostRace()
            kvs = result.responses[0].response_range.kvs
            value = json.loads(kvs[0].value) if kvs else {}
            if "result" in value and (write_id is None or value.get("write_id") == write_id):
                return value
            raise _LostRace()


def _history_entry(kv: KeyValue) -> HistoryEntry:
    value = loads(kv.value)
    config = Deployment.from_json(value["config"])
    return HistoryEntry(
        cache_version=config.cache_version, action=value.get("action", ""), actor=value.get("actor", ""),
        at=value.get("at", ""), config=config, request=value.get("request") or {},
        request_id=value.get("request_id", ""))
