"""Group commit of deployment changes: validate queued changes in order against an evolving
state and build ONE etcd transaction that writes all their versions.

plan_batch is pure (no etcd): given the deployment as read (or as cached), the idempotency
records known for the changes' keys and the org's models, it decides each change's answer
as if the changes ran one after another, and lists the compares and puts that make the
whole batch one atomic write. A change that fails validation gets its error and does not
stop the others; each change that writes gets its own cache_version, history key and
idempotency record. The caller answers nothing before the transaction committed (or, for a
batch that writes nothing, before its compares held), so every answer describes a state
that really existed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from controlplane.records import ABSENT, Record, change_result, history_value, record_value, same_request
from tsplit.errors import ApiError
from tsplit.etcd import key_missing, mod_revision_is, put_op
from tsplit.layout import Layout
from tsplit.resources import BASIS_POINTS, Challenger, Deployment, Model, all_finite, dumps

MAX_CHALLENGER_BP = BASIS_POINTS // 2

Mutation = tuple[Deployment, Challenger | None]
Mutate = Callable[[Deployment, Mapping[str, Model]], Mutation | Awaitable[Mutation]]


@dataclass(frozen=True)
class ChangeResult:
    deployment: Deployment  # the deployment after the change (the current one on a no-op)
    changed: bool
    challenger: Challenger | None = None  # the challenger the action touched
    replayed: bool = False  # the answer of an earlier request with the same request_id

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment.to_json(), "changed": self.changed,
            "challenger": self.challenger.to_json() if self.challenger else None,
        }

    @classmethod
    def replay(cls, record: Record) -> "ChangeResult":
        """The answer a committed change's record stands for; its config is the version's
        history entry (read with the record)."""
        if record.config is None or record.config.cache_version != record.change_version:
            raise ValueError("a change's record is replayed with the config of the version it wrote")
        challenger_id = record.value["result"].get("challenger_id") if record.value else None
        challenger = next((c for c in record.config.challengers if c.id == challenger_id), None)
        return cls(record.config, True, challenger, replayed=True)


@dataclass(frozen=True)
class PendingChange:
    """One queued change request, as the store received it."""

    org_id: str
    slug: str
    mutate: Mutate
    action: str
    request_body: dict[str, Any]
    actor: str
    request_id: str
    request_key: str
    expected_cache_version: int | None
    authorize: Callable[[], None]
    deadline: float  # loop time by which it must be answered
    solo: bool = False  # runs in a batch of its own (its mutate reads committed history)
    # Loop time by which its first read must have answered: "etcd unreachable" is answered
    # within read_timeout_s of arrival, however long the change queued (inf once retried).
    read_by: float = float("inf")
    evidence: dict[str, Any] | None = None  # a guardrail decision's, kept in its history entry


Outcome = ChangeResult | BaseException


@dataclass
class BatchPlan:
    write_id: str  # names this attempt's transaction in the records it writes
    outcomes: list[Outcome]  # one per planned change, in order (deferred ones have none)
    final: Deployment | None  # the deployment after the batch
    compares: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    written_keys: list[tuple[str, int]] = field(default_factory=list)  # (record key, compared revision)
    deferred: int = 0  # changes at the end left for the next batch (the transaction was full)
    model_misses: bool = False  # a model id was looked up and not found
    txn_bytes: int = 0  # bytes of history and record values the plan writes

    @property
    def writes(self) -> bool:
        return bool(self.ops)

    def writes_for(self, index: int) -> bool:
        """Whether the transaction writes a version for the change at index."""
        outcome = self.outcomes[index] if index < len(self.outcomes) else None
        return isinstance(outcome, ChangeResult) and outcome.changed and not outcome.replayed


class OrgModels(Mapping[str, Model]):
    """One org's view of a models-by-id table; remembers ids asked for and not found, so
    that a cached table can be refreshed before a "not registered" verdict is trusted."""

    def __init__(self, models: Mapping[str, Model], org_id: str):
        self._models, self._org_id = models, org_id
        self.misses: set[str] = set()

    def __getitem__(self, model_id: str) -> Model:
        model = self._models.get(model_id)
        if model is None or model.org_id != self._org_id:
            self.misses.add(model_id)
            raise KeyError(model_id)
        return model

    def __contains__(self, model_id: object) -> bool:
        try:
            self[model_id]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return (m for m, model in self._models.items() if model.org_id == self._org_id)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_precondition(current: Deployment, expected_cache_version: int | None) -> None:
    if expected_cache_version is not None and expected_cache_version != current.cache_version:
        raise ApiError(
            "version_conflict",
            f"expected_cache_version is {expected_cache_version} but the deployment is at "
            f"version {current.cache_version}; nothing was changed")


def check_invariants(current: Deployment, new: Deployment) -> None:
    """The last guard before a config is stored: whatever the validation core did, never
    store more than 50 % for challengers, or a change of identity."""
    if new.challenger_bp > MAX_CHALLENGER_BP:
        raise ApiError("invalid_traffic_config", "active challengers' traffic_pct would exceed 50 in total")
    if (new.deployment_id, new.org_id) != (current.deployment_id, current.org_id):
        raise ValueError("a change must not alter deployment_id or org_id")


def deployment_not_found(slug: str) -> ApiError:
    return ApiError("deployment_not_found", f"deployment {slug!r} not found")


def replayable(record: Record, change: PendingChange) -> ChangeResult | None:
    """The earlier answer of this request_id, or None to go on. Replaying needs authorize()
    and the same request; another org's record is never answered (it counts as absent)."""
    if record.value is None or record.value.get("org_id") != change.org_id:
        return None
    change.authorize()
    if not same_request(record.value, change.action, change.request_body):
        raise ApiError(
            "invalid_request", "request_id (Idempotency-Key) was already used for a different request; use a new one")
    return ChangeResult.replay(record)


async def plan_batch(
    layout: Layout, changes: list[PendingChange], state: Deployment | None, state_revision: int,
    records: Mapping[str, Record], models: Mapping[str, Model], *, now: str, write_id: str,
    compare_all_records: bool, max_txn_bytes: int, always_take_first: bool = True, record_lease: int = 0,
) -> BatchPlan:
    """Decide every change in order against the evolving deployment.

    state is the deployment as read at state_revision (its key's mod_revision; None when the
    key is missing). records holds what is known of each change's idempotency record (a key
    left out is taken as absent). With compare_all_records, the transaction also compares
    the records of changes that write nothing (their answers assumed the records absent).
    A change whose writes would push the transaction past max_txn_bytes is deferred, with
    every change after it, to the next batch (the first writer is always taken, unless
    always_take_first is False: the transaction already carries other deployments).
    Records are written under record_lease (controlplane.records.RecordLease).
    """
    outcomes: list[Outcome] = []
    evolving = state
    written: dict[str, Record] = {}  # record key -> record written by this batch
    compared: dict[str, int] = {}  # record key -> revision the transaction compares
    history_compares: list = []
    history_puts: list = []
    txn_bytes = 0
    views: list[OrgModels] = []
    plan = BatchPlan(write_id, outcomes, state)
    for index, change in enumerate(changes):
        view = OrgModels(models, change.org_id)
        views.append(view)
        known = records.get(change.request_key, ABSENT)
        if compare_all_records:
            compared.setdefault(change.request_key, known.mod_revision)
        try:
            replay = replayable(written.get(change.request_key, known), change)
            if replay is not None:
                outcomes.append(replay)
                continue
            current = evolving if evolving is not None and evolving.org_id == change.org_id else None
            if current is None:
                raise deployment_not_found(change.slug)
            change.authorize()
            check_precondition(current, change.expected_cache_version)
            outcome = change.mutate(current, view)
            new, challenger = await outcome if inspect.isawaitable(outcome) else outcome
            if new == current:
                outcomes.append(ChangeResult(current, changed=False, challenger=challenger))
                continue
            if not all_finite(change.request_body):
                raise ValueError("a stored request body must not hold NaN or Infinity")
            new = replace(new, cache_version=current.cache_version + 1, updated_at=now, updated_by=change.actor)
            check_invariants(current, new)
            result = ChangeResult(new, changed=True, challenger=challenger)
            record = record_value(
                request_id=change.request_id, org_id=change.org_id, action=change.action,
                request=change.request_body, at=now, write_id=write_id,
                result=change_result(new.deployment_id, new.cache_version, challenger.id if challenger else None))
            history_key = layout.history_version(change.slug, new.cache_version)
            history = history_value(
                new, action=change.action, actor=change.actor, at=now, request=change.request_body,
                request_id=change.request_id, evidence=change.evidence)
            record_bytes = dumps(record)
            size = len(history) + len(record_bytes) + 2 * len(history_key)
            if (written or not always_take_first) and txn_bytes + size > max_txn_bytes:
                plan.deferred = len(changes) - index
                views.pop()
                break
            txn_bytes += size
        except ApiError as err:
            outcomes.append(err)
            continue
        except Exception as err:  # a bug in one change's validation must not fail the others
            outcomes.append(err)
            continue
        compared.setdefault(change.request_key, known.mod_revision)
        written[change.request_key] = Record(known.mod_revision, record, new)
        plan.written_keys.append((change.request_key, compared[change.request_key]))
        history_compares.append(key_missing(history_key))
        history_puts += [put_op(history_key, history), put_op(change.request_key, record_bytes, record_lease)]
        evolving = new
        outcomes.append(result)
    plan.final = evolving
    plan.txn_bytes = txn_bytes
    plan.model_misses = any(view.misses for view in views)
    if state is not None:
        plan.compares.append(mod_revision_is(layout.deployment(state.deployment_id), state_revision))
    plan.compares += [mod_revision_is(key, revision) for key, revision in compared.items()]
    plan.compares += history_compares
    if history_puts:
        assert evolving is not None
        plan.ops = [put_op(layout.deployment(evolving.deployment_id), dumps(evolving.to_json())), *history_puts]
    return plan
