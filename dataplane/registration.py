"""A router's lease-bound record in etcd: who it is, what config it applied, its counters.

The record lives at layout.router(router_id) under a lease (TTL ~5 s) that a background
task keeps alive, so a router that dies disappears within the TTL and one that stops
revokes it at once. Another task rewrites the record every second while its counters
change (every idle_rewrite_s while nothing changes: an idle router does not load etcd),
and within a few ms of notify_applied() (the routing table changed), so the status shows
propagation as it happens. If the lease is lost (etcd unreachable for longer
than the TTL), a new one is granted and the record rewritten once etcd answers again.

The record's fields and counters are defined once in tsplit/router_record.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from dataplane.applied import AppliedVersions
from dataplane.config_sync import Backoff
from tsplit.etcd import Etcd, EtcdError, EtcdUnavailable
from tsplit import router_record
from tsplit.layout import Layout
from tsplit.resources import dumps

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RegistrationSettings:
    lease_ttl_s: int = 5
    write_interval_s: float = 1.0
    # Changes closer together than this share one write (a burst of config changes): at
    # most 20 writes a second, each within 50 ms (plus the put) of the change. With many
    # deployments a record is ~20 bytes per deployment, and every write is a put etcd
    # fsyncs, so a write per change would load etcd for the control plane's writes.
    min_write_gap_s: float = 0.05
    # A record whose applied map and counters are as last written is rewritten (its
    # updated_at) only this often.
    idle_rewrite_s: float = 10.0
    backoff_start_s: float = 0.05
    backoff_cap_s: float = 1.0
    # etcd refuses requests over 1.5 MiB by default; past this the counters are left out
    # so that at least the applied versions get through.
    max_record_bytes: int = 1_000_000
    revoke_timeout_s: float = 1.0


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _lease_lost(err: EtcdError) -> bool:
    return "lease not found" in str(err)


class Registration:
    """Register one router (or proxyless client) and keep its record fresh.

    `applied` and `stats` are called on every write, from the event loop; notify_applied()
    must be called from the event loop's thread too. When `applied` returns an
    AppliedVersions, its cached JSON is written as is (no copy, no re-encoding).
    """

    def __init__(
        self,
        etcd: Etcd,
        layout: Layout,
        router_id: str,
        kind: str,
        address: str,
        metrics_url: str,
        applied: Callable[[], dict[str, int]],
        stats: Callable[[], dict],
        settings: RegistrationSettings = RegistrationSettings(),
    ):
        self._identity = router_record.identity(router_id, kind, address, metrics_url, os.getpid(), utc_now())
        self._etcd, self._settings = etcd, settings
        self.key = layout.router(router_id)
        self._applied, self._stats = applied, stats
        self._identity_json = dumps(self._identity).decode()[:-1]   # without the closing brace
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.lease_id: int | None = None
        # For metrics and tests.
        self.writes = 0
        self.skipped = 0  # periodic writes left out: nothing changed
        self.leases_granted = 0
        self._last_content, self._last_put, self._last_lease = b"", float("-inf"), None

    async def start(self) -> None:
        """Register once (unless etcd is unreachable: then the background task keeps
        trying) and start keeping the record fresh."""
        if self._tasks:
            return
        try:
            await self._write()
        except EtcdError as err:
            log.warning("router registration deferred: %s", err)
            self._changed.set()
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="registration-writer"),
            asyncio.create_task(self._keepalive_loop(), name="registration-keepalive"),
        ]

    def notify_applied(self) -> None:
        """The routing table changed: rewrite the record now."""
        self._changed.set()

    async def stop(self) -> None:
        """Stop writing and revoke the lease, which deletes the record (if etcd cannot be
        reached, the lease expires after its TTL instead)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lease, self.lease_id = self.lease_id, None
        if lease is not None:
            try:
                await asyncio.wait_for(self._etcd.lease_revoke(lease), self._settings.revoke_timeout_s)
            except (EtcdError, asyncio.TimeoutError) as err:
                log.warning("could not revoke the registration lease (it expires by TTL): %s", err)

    def record(self) -> dict[str, Any]:
        return {**self._identity, "updated_at": utc_now(), "applied": dict(self._call(self._applied)),
                "stats": dict(self._call(self._stats))}

    def _call(self, source: Callable[[], Mapping]) -> Mapping:
        try:
            return source()
        except Exception:  # the record still goes out, without this part
            log.exception("router record: %s failed", getattr(source, "__name__", source))
            return {}

    def _applied_json(self) -> str:
        applied = self._call(self._applied)
        if isinstance(applied, AppliedVersions):
            return applied.to_json()
        try:
            return dumps(dict(applied)).decode()
        except (TypeError, ValueError) as err:
            log.error("router record: applied versions are not JSON (%s); writing none", err)
            return "{}"

    def _encode(self) -> bytes:
        """The record's JSON, put together from its parts (the applied map's JSON may be
        cached: see AppliedVersions)."""
        head = f'{self._identity_json},"updated_at":"{utc_now()}","applied":{self._applied_json()},"stats":'
        try:
            stats = dumps(dict(self._call(self._stats))).decode()
        except (TypeError, ValueError) as err:
            log.error("router record counters are not JSON (%s); writing it without them", err)
            stats = None
        encoded = (head + (stats or "{}") + "}").encode()
        if stats is not None and len(encoded) > self._settings.max_record_bytes:
            log.error("router record is %d bytes, over %d; writing it without counters",
                      len(encoded), self._settings.max_record_bytes)
            encoded = (head + "{}}").encode()
        return encoded

    async def _ensure_lease(self) -> int:
        if self.lease_id is None:
            self.lease_id = await self._etcd.lease_grant(self._settings.lease_ttl_s)
            self.leases_granted += 1
            log.info("router %s registered under lease %x", self._identity["router_id"], self.lease_id)
        return self.lease_id

    async def _write(self, changed: bool = True) -> None:
        lease = await self._ensure_lease()
        value = self._encode()
        content = value[value.index(b',"applied":'):]  # all but updated_at
        now = asyncio.get_running_loop().time()
        if (not changed and content == self._last_content and lease == self._last_lease
                and now - self._last_put < self._settings.idle_rewrite_s):
            self.skipped += 1
            return
        try:
            await self._etcd.put(self.key, value, lease=lease)
        except EtcdUnavailable:
            raise
        except EtcdError as err:
            if not _lease_lost(err):
                raise
            log.warning("registration lease %x is gone; granting a new one", lease)
            if self.lease_id == lease:
                self.lease_id = None
            await self._etcd.put(self.key, value, lease=await self._ensure_lease())
        self.writes += 1
        self._last_content, self._last_put, self._last_lease = content, now, self.lease_id

    async def _write_loop(self) -> None:
        settings = self._settings
        backoff = Backoff(settings.backoff_start_s, settings.backoff_cap_s)
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        while True:
            wait = last_write + settings.write_interval_s - loop.time()
            if wait > 0 and not self._changed.is_set():
                try:
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            gap = last_write + settings.min_write_gap_s - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)
            changed = self._changed.is_set()
            self._changed.clear()
            try:
                await self._write(changed)
                backoff.reset()
            except EtcdError as err:
                delay = backoff.next()
                log.warning("router record not written (%s); retrying in %.0f ms", err, delay * 1000)
                self._changed.set()
                await asyncio.sleep(delay)
            last_write = loop.time()

    async def _keepalive_loop(self) -> None:
        settings = self._settings
        backoff = Backoff(settings.backoff_start_s, settings.backoff_cap_s)
        interval = settings.lease_ttl_s / 3
        delay = interval
        while True:
            await asyncio.sleep(delay)
            delay = interval
            lease = self.lease_id
            if lease is None:
                continue  # the writer grants one
            try:
                remaining = await self._etcd.lease_keepalive(lease)
            except EtcdError as err:
                delay = min(interval, backoff.next())
                log.warning("registration keepalive failed: %s", err)
                continue
            backoff.reset()
            if remaining <= 0 and self.lease_id == lease:
                log.warning("registration lease %x expired; re-registering", lease)
                self.lease_id = None
                self._changed.set()
