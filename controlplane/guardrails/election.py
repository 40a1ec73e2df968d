"""One control-plane replica at a time holds a role, by a lease-bound etcd key.

The holder's key (layout.leader(role)) is created only if missing, under a lease it keeps
alive; a holder that dies stops renewing, the lease expires within its TTL and etcd deletes
the key, and a waiting replica (polling every poll_s) creates it. A holder that cannot renew
for a whole TTL (etcd unreachable) stops leading, since another replica may hold the role by
then; one that stops cleanly revokes its lease, so the next takes over at once. Holding the
key is not a fence: what the leader writes must be safe if two replicas briefly both think
they lead (the guardrail judge's changes are revision-checked and idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable

from tsplit.etcd import Etcd, EtcdError, key_missing, put_op
from tsplit.resources import dumps

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, etcd: Etcd, key: str, identity: str, ttl_s: int = 5, poll_s: float = 0.25):
        self.etcd, self.key, self.identity, self.ttl_s, self.poll_s = etcd, key, identity, ttl_s, poll_s
        self.leading = False
        self.terms = 0  # times this replica became the leader
        self._lease: int | None = None

    async def run(self, lead: Callable[[int], Awaitable[None]]) -> None:
        """Campaign forever; while leading, run lead(lease_id) (cancelled on losing the lease)."""
        try:
            while True:
                try:
                    lease = await self._campaign()
                except (EtcdError, asyncio.TimeoutError) as err:
                    log.debug("leader election for %s: etcd unreachable (%s)", self.key, err)
                    lease = None
                if lease is None:
                    await asyncio.sleep(self.poll_s)
                    continue
                await self._hold(lease, lead)
        finally:
            await self._resign()

    async def _campaign(self) -> int | None:
        """The lease of a newly won key, or None while another replica holds it."""
        if await asyncio.wait_for(self.etcd.get(self.key), self.ttl_s) is not None:
            return None
        lease = await asyncio.wait_for(self.etcd.lease_grant(self.ttl_s), self.ttl_s)
        value = dumps({"identity": self.identity, "pid": os.getpid(), "host": socket.gethostname(),
                       "lease": lease})
        result = await asyncio.wait_for(
            self.etcd.txn([key_missing(self.key)], [put_op(self.key, value, lease=lease)]), self.ttl_s)
        if not result.succeeded:
            await self._revoke(lease)
            return None
        return lease

    async def _hold(self, lease: int, lead: Callable[[int], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        self._lease, self.leading = lease, True
        self.terms += 1
        log.info("%s now holds %s (lease %x)", self.identity, self.key, lease)
        task = loop.create_task(lead(lease), name=f"leader:{self.key}")
        renewed = loop.time()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.ttl_s / 3)
                if task.done():
                    break
                try:
                    remaining = await asyncio.wait_for(self.etcd.lease_keepalive(lease), self.ttl_s / 3)
                except (EtcdError, asyncio.TimeoutError) as err:
                    if loop.time() - renewed >= self.ttl_s:
                        log.warning("%s lost %s: lease not renewed for %ds (%s)", self.identity, self.key,
                                    self.ttl_s, err)
                        return
                    continue
                if remaining <= 0:
                    log.warning("%s lost %s: its lease expired", self.identity, self.key)
                    return
                renewed = loop.time()
            if task.exception() is not None:
                log.error("%s: the leader's work failed; resigning", self.key, exc_info=task.exception())
        finally:
            self.leading = False
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self._lease == lease:
                self._lease = None
                await self._revoke(lease)

    async def _revoke(self, lease: int) -> None:
        try:
            await asyncio.wait_for(self.etcd.lease_revoke(lease), 1.0)
        except (EtcdError, asyncio.TimeoutError):
            pass  # it expires by TTL

    async def _resign(self) -> None:
        lease, self._lease = self._lease, None
        self.leading = False
        if lease is not None:
            await self._revoke(lease)
