"""Group commit of deployment changes in one control-plane process.

Every change joins one process-wide queue. Workers (settings.max_concurrent_batches, one by
default) each take a batch: every waiting change of deployments no other batch is writing,
in arrival order, up to settings.max_batch; after a batch of several changes a worker waits
up to settings.linger_s for as many to queue again (see _linger). A batch costs two etcd round trips whatever its
size: one read of its deployments (so that etcd down or frozen answers "unavailable"
before anything is sent) and one transaction that writes every version of every
deployment in it, or, when nothing changes, confirms the answers' assumptions. Changes are
validated in order against each deployment's evolving state (controlplane.change_batch).

The first attempt assumes the changes' idempotency records absent; the transaction
compares them and each deployment's mod_revision, so any surprise (another replica wrote,
a request_id was used before) only fails the compare: then everything is read again,
records included, and the batch retried. Correctness rests on the compares alone; the
queue only saves round trips. A write whose answer is lost is resolved aside, so that the
changes behind it still reach etcd (and fail fast while it is down).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from controlplane.change_batch import BatchPlan, ChangeResult, Outcome, PendingChange, plan_batch
from controlplane.models_cache import ModelsCache
from controlplane.records import ABSENT, Record, RecordLease
from tsplit.errors import ApiError
from tsplit.etcd import Etcd, EtcdLeaseNotFound, EtcdStorageFull, EtcdUnavailable, get_op
from tsplit.layout import Layout
from tsplit.resources import Deployment, loads

if TYPE_CHECKING:
    from controlplane.store import StoreSettings

log = logging.getLogger(__name__)

Waiter = tuple[PendingChange, "asyncio.Future[ChangeResult]"]
Read = Callable[[Awaitable[Any], float], Awaitable[Any]]  # an etcd read bounded by a deadline; ApiError on failure
Resolve = Callable[[str, int, float, str], Awaitable[Any]]  # store._resolve_lost_write

STOPPED = ApiError("commit_unknown", "the control plane stopped while writing; retry with the same "
                                     "request_id (Idempotency-Key) to learn the outcome")


class LostRace(Exception):
    """A compare of the write failed: someone wrote first."""


class _AnswerLost(Exception):
    """etcd's answer to a batch's write was lost: it may or may not have committed."""

    def __init__(self, plans: dict[str, BatchPlan], deadline: float):
        super().__init__("etcd's answer to a write was lost")
        self.plans, self.deadline = plans, deadline


class BatchStats:
    """How full the batches are: counted per committed (or write-free) batch and logged as
    one line every log_every_s while writes flow, so that a deployment can see whether
    group commit is paying off (with 16 busy clients a batch should carry many changes)."""

    def __init__(self, log_every_s: float = 10.0):
        self.log_every_s = log_every_s
        self.batches = self.changes = self.lost_races = self.largest = 0  # since the last line
        self._since: float | None = None

    def batch(self, changes: int, now: float) -> None:
        self.batches += 1
        self.changes += changes
        self.largest = max(self.largest, changes)
        if self._since is None:
            self._since = now
        elif now - self._since >= self.log_every_s:
            log.info("group commit: %d batches in %.0f s, %.1f changes per batch (largest %d), %d lost races",
                     self.batches, now - self._since, self.changes / self.batches, self.largest, self.lost_races)
            self.batches = self.changes = self.lost_races = self.largest = 0
            self._since = now


STORAGE_FULL = ApiError("storage_full", "etcd refused the write for lack of space (its NOSPACE alarm or an "
                                        "over-size request); nothing was written")


def settle(answer: asyncio.Future, outcome: Outcome) -> None:
    if answer.done():
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def _unknown_answer(plan: BatchPlan, index: int, error: ApiError) -> ApiError:
    """commit_unknown for a change the lost write carried; unavailable for the others
    (nothing was written for them, and their verdicts assumed the batch committed)."""
    if plan.writes_for(index):
        return error
    return ApiError("unavailable", "etcd did not answer in time; nothing was written for this request, retry later")


class GroupCommit:
    def __init__(self, etcd: Etcd, layout: Layout, settings: "StoreSettings", clock: Callable[[], str],
                 models: ModelsCache, read: Read, resolve_lost_write: Resolve, record_lease: RecordLease):
        self.etcd, self.layout, self.settings, self.clock = etcd, layout, settings, clock
        self._record_lease = record_lease
        self._models, self._read, self._resolve_lost_write = models, read, resolve_lost_write
        self._queue: deque[Waiter] = deque()
        self._writing: set[str] = set()  # deployments some batch is writing now
        self._workers = 0
        self._tasks: set[asyncio.Task] = set()
        self.stats = BatchStats()
        self._filled: asyncio.Event | None = None  # set once _want changes are queued (see _linger)
        self._want = 0

    def submit(self, change: PendingChange) -> "asyncio.Future[ChangeResult]":
        answer: asyncio.Future[ChangeResult] = asyncio.get_running_loop().create_future()
        self._enqueue([(change, answer)])
        return answer

    def _enqueue(self, waiters: list[Waiter], front: bool = False) -> None:
        if front:
            self._queue.extendleft(reversed(waiters))
        else:
            self._queue.extend(waiters)
        if self._want and self._filled is not None and len(self._queue) >= self._want:
            self._filled.set()
        if self._workers < self.settings.max_concurrent_batches:
            self._workers += 1
            self._track(self._work(), "tsplit-group-commit")

    def _track(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        """Batch after batch, until nothing waiting can be taken (what is left belongs to
        deployments other workers are writing: they take it when they are done)."""
        try:
            previous = 0
            while True:
                await self._linger(previous)
                batch = self._take()
                if not batch:
                    return
                previous = len(batch)
                slugs = {change.slug for change, _ in batch}
                self._writing |= slugs
                try:
                    await self._run_batch(batch)
                finally:
                    self._writing -= slugs
        finally:
            self._workers -= 1

    async def _linger(self, previous: int) -> None:
        """After a batch of several changes, wait up to settings.linger_s for as many to
        queue again: their clients are busy reading the answers and sending the next
        changes, and one transaction for all of them costs etcd and this process far less
        than several small ones (16 clients: ~25 % less CPU per change in both). A lone
        client (batches of one) never waits."""
        want = min(previous, self.settings.max_batch)
        if want < 2 or self.settings.linger_s <= 0 or len(self._queue) >= want:
            return
        self._filled = asyncio.Event()  # made here, in the running loop
        self._want = want
        try:
            await asyncio.wait_for(self._filled.wait(), self.settings.linger_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._want = 0

    def _take(self) -> list[Waiter]:
        """Waiting changes of deployments no batch is writing, in order; a deployment's
        changes are never reordered (once one of them is left, the rest are left too), and
        a solo change comes first among its deployment's."""
        batch: list[Waiter] = []
        left: list[Waiter] = []
        skipped: set[str] = set()
        in_batch: set[str] = set()
        while self._queue and len(batch) < self.settings.max_batch:
            change, answer = self._queue.popleft()
            if answer.done():  # the caller went away before its change was tried
                continue
            slug = change.slug
            if slug in skipped or slug in self._writing or (change.solo and slug in in_batch):
                skipped.add(slug)
                left.append((change, answer))
                continue
            batch.append((change, answer))
            in_batch.add(slug)
            if change.solo:
                skipped.add(slug)  # nothing of its deployment follows it in this batch
        self._queue.extendleft(reversed(left))
        return batch

    async def _run_batch(self, batch: list[Waiter]) -> None:
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
                groups: dict[str, list[Waiter]] = {}
                for waiter in batch:
                    groups.setdefault(waiter[0].slug, []).append(waiter)
                deadline = min(change.deadline for change, _ in batch)
                read_deadline = deadline if read_records else min(deadline, *(c.read_by for c, _ in batch))
                try:
                    plans = await self._attempt(groups, read_records, deadline, read_deadline)
                except _AnswerLost as lost:
                    # Found out aside, so that the changes queued behind do not wait for it.
                    self._track(self._settle_lost(groups, lost), "tsplit-resolve")
                    return
                except LostRace:
                    self.stats.lost_races += 1
                    read_records = True
                    await asyncio.sleep(min(random.uniform(0, backoff), max(0.0, deadline - loop.time())))
                    backoff = min(backoff * 2, self.settings.max_backoff_s)
                    continue
                except ApiError as err:  # etcd unreachable before anything was sent
                    for _, answer in batch:
                        settle(answer, err)
                    return
                self.stats.batch(len(batch), loop.time())
                self._answer(groups, plans)
                return
        except Exception as err:  # a bug: its changes answer "internal", the worker goes on
            log.exception("a batch of changes failed")
            for _, answer in batch:
                settle(answer, err)
        except BaseException:  # the worker was cancelled (shutdown) while writing
            for _, answer in batch:
                settle(answer, STOPPED)
            raise

    def _answer(self, groups: dict[str, list[Waiter]], plans: dict[str, BatchPlan]) -> None:
        """Answer a committed (or write-free) batch; deferred changes go first in the queue."""
        deferred = [w for slug, plan in plans.items() if plan.deferred for w in groups[slug][-plan.deferred:]]
        if deferred:
            self._enqueue(deferred, front=True)
        for slug, plan in plans.items():
            for (_, answer), outcome in zip(groups[slug], plan.outcomes):
                settle(answer, outcome)

    async def _settle_lost(self, groups: dict[str, list[Waiter]], lost: _AnswerLost) -> None:
        """Learn whether a batch whose answer was lost committed, then answer its changes,
        or queue them again when it surely did not."""
        first = next(plan for plan in lost.plans.values() if plan.written_keys)
        key, revision = first.written_keys[0]
        try:
            await self._resolve_lost_write(key, revision, lost.deadline, first.write_id)
        except LostRace:
            retry = [(dataclasses.replace(change, read_by=float("inf")), answer)
                     for waiters in groups.values() for change, answer in waiters]
            self._enqueue(retry, front=True)
            return
        except ApiError as err:
            self._answer_unknown(groups, lost.plans, err)
            return
        except Exception as err:
            log.exception("resolving a lost write failed")
            for waiters in groups.values():
                for _, answer in waiters:
                    settle(answer, err)
            return
        except BaseException:
            self._answer_unknown(groups, lost.plans, STOPPED)
            raise
        self._answer(groups, lost.plans)

    @staticmethod
    def _answer_unknown(groups: dict[str, list[Waiter]], plans: dict[str, BatchPlan], error: ApiError) -> None:
        for slug, waiters in groups.items():
            for index, (_, answer) in enumerate(waiters):
                settle(answer, _unknown_answer(plans[slug], index, error))

    async def _attempt(
        self, groups: dict[str, list[Waiter]], read_records: bool, deadline: float, read_deadline: float,
    ) -> dict[str, BatchPlan]:
        """One try: read the deployments (and the records, when asked), plan, write."""
        changes = {slug: [change for change, _ in waiters] for slug, waiters in groups.items()}
        states, records = await self._read_state(changes, read_records, read_deadline)
        lease = await self._read(self._record_lease.current(), read_deadline)
        models_fresh = read_records
        write_id = uuid.uuid4().hex
        while True:
            plans: dict[str, BatchPlan] = {}
            budget = self.settings.max_txn_bytes
            for slug, slug_changes in changes.items():
                state, revision = states[slug]
                plan = await plan_batch(
                    self.layout, slug_changes, state, revision, records, self._models.by_id, now=self.clock(),
                    write_id=write_id, compare_all_records=not read_records, max_txn_bytes=budget,
                    always_take_first=not plans, record_lease=lease)
                plans[slug] = plan
                budget -= plan.txn_bytes
            if models_fresh or not any(plan.model_misses for plan in plans.values()):
                break
            await self._read(self._models.refresh(), deadline)  # "not registered" only on a fresh table
            models_fresh = True
        compares = [c for plan in plans.values() for c in plan.compares]
        ops = [op for plan in plans.values() for op in plan.ops]
        if ops:
            await self._commit(compares, ops, plans, deadline, lease)
        elif not read_records and not await self._holds(compares, deadline):
            # Answers given without writing rest on records assumed absent: confirmed first.
            raise LostRace()
        return plans

    async def _read_state(
        self, changes: dict[str, list[PendingChange]], read_records: bool, deadline: float,
    ) -> tuple[dict[str, tuple[Deployment | None, int]], dict[str, Record]]:
        """Each deployment and its key's mod_revision, read in one call; with read_records
        also every change's idempotency record and the latest models."""
        slugs = list(changes)
        keys = [self.layout.deployment(slug) for slug in slugs]
        if len(keys) == 1:
            reading: Awaitable[Any] = self.etcd.get(keys[0])
        else:
            reading = self.etcd.txn([], [get_op(key) for key in keys])
        extra: list[Awaitable[Any]] = []
        record_keys: list[str] = []
        if read_records:
            record_keys = list(dict.fromkeys(c.request_key for cs in changes.values() for c in cs))
            extra = [self._read(self.etcd.get(key), deadline) for key in record_keys]
            extra.append(self._read(self._models.refresh(), deadline))
        found, *rest = await asyncio.gather(self._read(reading, deadline), *extra)
        if read_records:
            rest.pop()  # the models' refresh
        if len(keys) == 1:
            kvs = [(found.value, found.mod_revision) if found is not None else None]
        else:
            kvs = [(r.response_range.kvs[0].value, r.response_range.kvs[0].mod_revision)
                   if r.response_range.kvs else None for r in found.responses]
        states = {slug: (Deployment.from_json(loads(kv[0])), kv[1]) if kv else (None, 0) for slug, kv in zip(slugs, kvs)}
        records = {key: Record.from_bytes(kv.mod_revision, kv.value) if kv is not None else ABSENT
                   for key, kv in zip(record_keys, rest)}
        # A committed change's answer is its version's config: read from its history entry.
        slug_of = {c.request_key: c.slug for cs in changes.values() for c in cs}
        replays = [(key, record) for key, record in records.items() if record.change_version is not None]
        entries = await asyncio.gather(*(
            self._read(self.etcd.get(self.layout.history_version(slug_of[key], record.change_version)), deadline)
            for key, record in replays))
        for (key, record), kv in zip(replays, entries):
            if kv is not None:
                records[key] = dataclasses.replace(record, config=Deployment.from_json(loads(kv.value)["config"]))
        return states, records

    def _timeout(self, deadline: float) -> float:
        return max(0.0, min(self.settings.write_timeout_s, deadline - asyncio.get_running_loop().time()))

    async def _holds(self, compares: list, deadline: float) -> bool:
        """Whether every compare holds now (a transaction that writes nothing)."""
        try:
            result = await asyncio.wait_for(self.etcd.txn(compares, []), self._timeout(deadline))
        except (EtcdUnavailable, asyncio.TimeoutError):
            raise ApiError("unavailable", "etcd is unreachable; nothing was written, retry later") from None
        return result.succeeded

    async def _commit(
        self, compares: list, ops: list, plans: dict[str, BatchPlan], deadline: float, lease: int,
    ) -> None:
        """Write the batch. Raises LostRace when it did not commit, _AnswerLost when its
        answer was lost, storage_full when etcd is out of space (nothing written)."""
        timeout = self._timeout(deadline)
        if timeout <= 0:
            raise ApiError("unavailable", "the change could not be made in time; nothing was written, retry later")
        try:
            result = await asyncio.wait_for(self.etcd.txn(compares, ops), timeout)
        except (EtcdUnavailable, asyncio.TimeoutError):
            log.warning("etcd's answer to a write was lost; finding out whether it committed")
            raise _AnswerLost(plans, deadline) from None
        except EtcdStorageFull as err:
            log.error("etcd refused a write: %s", err)
            raise STORAGE_FULL from None
        except EtcdLeaseNotFound:
            log.warning("etcd no longer knows the idempotency records' lease; granting a new one")
            self._record_lease.forget(lease)
            raise LostRace() from None
        if not result.succeeded:
            raise LostRace()
