"""The values the control plane stores beside a config: history versions and idempotency
records (SPEC sections 3 and 6), built here and nowhere else, and the lease that bounds the
records' life.

A history version ({prefix}/history/{slug}/{n}) keeps the config of version n for ever.
An idempotency record ({prefix}/requests/{scope}/{id}) keeps only what a retry with the
same key must answer, under a lease (24 h by default): the org, the action, a digest of
the request (a retry must send the same one), the id of the transaction that wrote it
(write_id) and the result. A deployment change's result names its version and challenger;
the config itself is read back from that version's history entry, so no record copies a
deployment. An "aborted" record is a fence (see ControlPlaneStore._resolve_lost_write).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson

from tsplit.resources import Deployment, dumps, loads

DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class Record:
    """An idempotency record as known to an attempt."""

    mod_revision: int  # 0 when absent (or assumed absent): the write compares it
    value: dict[str, Any] | None  # a committed record, else None (an aborted fence counts as absent)
    config: Deployment | None = None  # a change's: the deployment at the record's version (its history entry)

    @classmethod
    def of(cls, mod_revision: int, value: dict[str, Any]) -> "Record":
        return cls(mod_revision, value if "result" in value else None)

    @classmethod
    def from_bytes(cls, mod_revision: int, raw: bytes) -> "Record":
        return cls.of(mod_revision, loads(raw))

    @property
    def change_version(self) -> int | None:
        """The version a deployment change's record says it wrote (None for other records)."""
        result = (self.value or {}).get("result") or {}
        version = result.get("cache_version")
        return version if isinstance(version, int) and "challenger_id" in result else None


ABSENT = Record(0, None)


def request_digest(request: dict[str, Any]) -> str:
    """What a record keeps of the request: a retry must send the same body (keys in any order)."""
    return hashlib.blake2b(orjson.dumps(request, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def same_request(record: dict[str, Any], action: str, request: dict[str, Any]) -> bool:
    return record.get("action") == action and record.get("request_digest") == request_digest(request)


def record_value(
    *, request_id: str, org_id: str, action: str, request: dict[str, Any], at: str, result: dict[str, Any],
    write_id: str = "",
) -> dict[str, Any]:
    """An idempotency record. write_id names the transaction that wrote it, so that after a
    lost answer the store can tell its own commit from another replica's."""
    return {"request_id": request_id, "org_id": org_id, "action": action, "request_digest": request_digest(request),
            "at": at, "result": result, "write_id": write_id}


def change_result(deployment_id: str, cache_version: int, challenger_id: str | None) -> dict[str, Any]:
    """A deployment change's result as its record keeps it (the config is in history)."""
    return {"deployment_id": deployment_id, "cache_version": cache_version, "challenger_id": challenger_id}


def fence_value(at: str) -> bytes:
    return dumps({"aborted": True, "at": at})


def history_value(
    config: Deployment, *, action: str, actor: str, at: str, request: dict[str, Any], request_id: str,
    evidence: dict[str, Any] | None = None,
) -> bytes:
    value = {"config": config.to_json(), "action": action, "actor": actor, "at": at,
             "request": request, "request_id": request_id}
    if evidence is not None:
        value["evidence"] = evidence
    return dumps(value)


class RecordLease:
    """The lease idempotency records are written under. One lease serves every record
    written in a window of ttl/24 (at most an hour), then a new one is granted: a record
    lives from ttl to ttl + window, and granting costs one round trip per window, not one
    per write. forget() drops a lease etcd no longer knows (a restored or wiped etcd)."""

    def __init__(self, grant: Callable[[int], Awaitable[int]], ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S):
        if ttl_s < 1:
            raise ValueError("the idempotency TTL must be at least 1 second")
        self._grant = grant
        self.ttl_s = ttl_s
        self.window_s = min(3600.0, max(1.0, ttl_s / 24))
        self._lease = 0
        self._until = 0.0
        self._granting: asyncio.Future[int] | None = None

    async def current(self) -> int:
        loop = asyncio.get_running_loop()
        if self._lease and loop.time() < self._until:
            return self._lease
        if self._granting is None:
            self._granting = loop.create_future()
            granting = self._granting
            try:
                lease = await self._grant(int(self.ttl_s + self.window_s + 0.999))
            except BaseException as err:
                granting.set_exception(err)
                granting.exception()  # retrieved: later waiters re-raise it themselves
                self._granting = None
                raise
            self._lease, self._until = lease, loop.time() + self.window_s
            granting.set_result(lease)
            self._granting = None
            return lease
        return await asyncio.shield(self._granting)

    def forget(self, lease: int) -> None:
        if lease == self._lease:
            self._lease = 0
