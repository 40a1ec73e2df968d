"""ProxylessClient: a router's routing inside the caller's process.

It follows etcd exactly like a router (ConfigSync: a snapshot, then a watch; the last good
config kept while etcd is away), registers like one (kind "client": applied versions and
counters, so `tsplit routers`, `tsplit get` and the status count its traffic), and hands
out channels whose unary calls the router's own dispatcher routes (dataplane.dispatch):

- channel(): a sync grpc.Channel. Calls run in the caller's thread over sync grpc
  channels to the backends: no thread hop and no event loop on the request path (a hop
  to a loop thread would cost more than the routing itself; README "Proxyless mode").
- aio_channel(): a grpc.aio.Channel. Calls run on the caller's event loop over grpc.aio
  channels of its own (bound to the loop of its first call).

The watch, the registration and the shadow mirrors (with their comparisons) run on the
client's own event loop in a daemon thread, off the callers' threads and loops; or, for a
client made with start_in_loop(), on the caller's loop. Counters are shared by every
channel; callers only append their counts to a deque (atomic, no lock to queue on), which
the client's loop applies every COUNT_INTERVAL_S and before every snapshot
(stats_snapshot(), the registration record).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import secrets
import socket
import threading
import time
from typing import Any, Sequence

import grpc

from dataplane.backends import BackendPool, SyncBackendPool
from dataplane.config_sync import ConfigSync
from dataplane.dispatch import Dispatcher, DispatchError, Metadata, apply_deferred, call_async, call_sync, rewrite
from dataplane.endpoint_refs import EndpointRefs
from dataplane.mirror import MirrorDispatcher, ShadowFromThread
from dataplane.proxyless.loop_thread import LoopThread, RunningLoop
from dataplane.proxyless.settings import ProxylessSettings, settings_from
from dataplane.registration import Registration
from dataplane.routing import RoutingTable, Variant
from dataplane.stats import RouterStats
from tsplit import package_version
from tsplit.etcd import Etcd
from tsplit.layout import Layout

log = logging.getLogger("tsplit.proxyless")

SERVER_NAME = "tsplit-proxyless"
KIND = "client"
COUNT_INTERVAL_S = 0.1


class ProxylessClient:
    """Route and mirror in-process. Thread-safe; close() it (or use it as a context manager).

    ProxylessClient(...) runs its background work on an event loop in a thread of its own
    and serves any caller: threads, and asyncio loops. An asyncio service should rather
    `await ProxylessClient.start_in_loop(...)`: the work then shares the service's loop,
    and grpc.aio does not hand each completion across threads between two loops."""

    def __init__(self, etcd_endpoints: str | Sequence[str] | None = None, etcd_prefix: str | None = None,
                 client_id: str | None = None, report: bool = True, wait_ready_s: float = 5.0,
                 settings: ProxylessSettings | None = None, **options: Any) -> None:
        """etcd_endpoints: 'host:port,...' or a list (default: $TSPLIT_ETCD, else
        127.0.0.1:2379); etcd_prefix (default $TSPLIT_ETCD_PREFIX, else /tsplit); options:
        the other ProxylessSettings fields. Returns at once: the first snapshot arrives in
        the background (wait_ready() to wait for it)."""
        self._setup(settings or settings_from(etcd_endpoints, etcd_prefix, client_id=client_id or "",
                                              report=report, wait_ready_s=wait_ready_s, **options))
        self._home: LoopThread | RunningLoop = LoopThread(f"tsplit-proxyless-{self.client_id}")
        try:
            self._home.run(self._start(), timeout=self.settings.close_timeout_s)
        except BaseException:
            self._home.stop(self.settings.close_timeout_s)
            raise

    @classmethod
    async def start_in_loop(cls, etcd_endpoints: str | Sequence[str] | None = None, etcd_prefix: str | None = None,
                            client_id: str | None = None, report: bool = True, wait_ready_s: float = 5.0,
                            settings: ProxylessSettings | None = None, **options: Any) -> "ProxylessClient":
        """A client whose background work runs on the running event loop (no thread of its
        own); close it with `await client.aclose()` there. Same arguments as the class."""
        client = cls.__new__(cls)
        client._setup(settings or settings_from(etcd_endpoints, etcd_prefix, client_id=client_id or "",
                                                report=report, wait_ready_s=wait_ready_s, **options))
        client._home = RunningLoop(asyncio.get_running_loop())
        await client._start()
        return client

    def _setup(self, settings: ProxylessSettings) -> None:
        self.settings = settings
        self.client_id = settings.client_id or f"c-{secrets.token_hex(4)}"
        self.layout = Layout(settings.etcd_prefix)
        self._ready = threading.Event()
        self._ready_by = time.monotonic() + settings.wait_ready_s
        self._lock = threading.Lock()                 # the lists below
        self._counting = threading.Lock()             # whoever applies the deferred counts
        self._deferred: collections.deque = collections.deque()
        self._ready_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._aio_channels: set = set()
        self._closed = False
        self.stats = RouterStats()
        self._sync_pool = SyncBackendPool()
        self._config: ConfigSync | None = None
        self._dispatcher = Dispatcher(
            self._table, self.stats, server_name=SERVER_NAME, server_version=package_version(),
            not_ready_message=f"proxyless client has no config yet (no snapshot from etcd {settings.etcd} "
                              f"within wait_ready_s={settings.wait_ready_s:g}); retry shortly",
            deferred=self._deferred)

    # ---- on the client's loop ---------------------------------------------------------

    async def _start(self) -> None:
        s = self.settings
        self._etcd = Etcd(s.etcd)
        self._mirror_pool = BackendPool()
        self._mirrors = MirrorDispatcher(self._mirror_pool.infer, rewrite, self.stats, s.max_inflight_mirrors,
                                         s.mirror_timeout_s)
        self._endpoints = EndpointRefs()
        self._config = ConfigSync(self._etcd, self.layout, on_changes=self._on_changes, on_table=self._on_table)
        self._registration = None
        self._registering = None
        if s.report:
            self._registration = Registration(
                self._etcd, self.layout, self.client_id, KIND, f"in-process@{socket.gethostname()}", "",
                applied=lambda: self._config.applied, stats=self.stats_snapshot, settings=s.registration)
            # In the background: an etcd that is down must not hold up the constructor.
            self._registering = asyncio.get_running_loop().create_task(self._registration.start())
        await self._config.start()
        self._counter = asyncio.get_running_loop().create_task(self._apply_counts_regularly())

    async def _apply_counts_regularly(self) -> None:
        while True:
            await asyncio.sleep(COUNT_INTERVAL_S)
            self._apply_counts()

    def _apply_counts(self) -> None:
        with self._counting:
            apply_deferred(self._deferred)

    def _on_changes(self, table: RoutingTable, changes) -> None:
        """O(changed), as the router's: a change does not walk every route."""
        unused, deleted = set(), []
        for change in changes:
            unused |= self._endpoints.replace(change.old, change.new)
            if change.new is None:
                deleted.append(change.slug)
        if deleted:
            with self._counting:
                apply_deferred(self._deferred)
                for slug in deleted:
                    self.stats.forget(slug)
        if unused:
            in_use = frozenset(self._endpoints.counts)
            self._mirror_pool.retain(in_use)
            self._sync_pool.retain(in_use)
            with self._lock:
                channels = list(self._aio_channels)
            for channel in channels:
                channel._retain_threadsafe(in_use)
        if changes and self._registration is not None:
            self._registration.notify_applied()

    def _on_table(self, table: RoutingTable) -> None:
        if self._ready.is_set():
            return
        with self._lock:
            waiters, self._ready_waiters = self._ready_waiters, []
            self._ready.set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed
                pass

    def stats_snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every variant's counters, as in the router record (counts applied first)."""
        with self._counting:
            apply_deferred(self._deferred)
            return self.stats.snapshot()

    async def _stop(self) -> None:
        grace = min(1.0, self.settings.close_timeout_s)
        self._counter.cancel()
        await self._mirrors.stop(grace)
        if self._registering is not None:
            self._registering.cancel()
            await asyncio.gather(self._registering, return_exceptions=True)
        if self._registration is not None:
            await self._registration.stop()   # revokes the lease: the record goes at once
        await self._config.stop()
        await self._mirror_pool.close()
        await self._etcd.close()

    # ---- state ------------------------------------------------------------------------

    def _table(self) -> RoutingTable | None:
        config = self._config
        return config.table if config is not None else None

    @property
    def table(self) -> RoutingTable | None:
        """The routing table in use (None before the first snapshot)."""
        return self._table()

    @property
    def ready(self) -> bool:
        return self._table() is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def applied_versions(self) -> dict[str, int]:
        return self._config.applied_versions() if self._config is not None else {}

    @property
    def mirrors_inflight(self) -> int:
        return self._mirrors.inflight

    @property
    def registration(self) -> Registration | None:
        return self._registration

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first snapshot; True once it is applied."""
        if self._home.in_thread and not self._ready.is_set():
            raise RuntimeError("wait_ready() would block the client's own event loop: await wait_ready_async()")
        return self._ready.wait(timeout)

    async def wait_ready_async(self, timeout: float | None = None) -> bool:
        if self._ready.is_set():
            return True
        try:
            await asyncio.wait_for(self._ready_future(), timeout)
        except TimeoutError:
            pass
        return self._ready.is_set()

    def _ready_future(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._table() is None:
                self._ready_waiters.append((loop, future))
                return future
        future.set_result(None)
        return future

    def _wait_budget(self, timeout: float | None) -> float:
        budget = self._ready_by - time.monotonic()
        return min(budget, timeout) if timeout is not None else budget

    # ---- channels ---------------------------------------------------------------------

    def channel(self) -> "ProxylessChannel":
        """A sync grpc.Channel routed by this client (any number; they share its pools)."""
        from dataplane.proxyless.sync_channel import ProxylessChannel
        self._check_open()
        return ProxylessChannel(self)

    def aio_channel(self) -> "ProxylessAioChannel":
        """A grpc.aio.Channel routed by this client, bound to the event loop of its first
        call (make one per loop)."""
        from dataplane.proxyless.aio_channel import ProxylessAioChannel
        self._check_open()
        channel = ProxylessAioChannel(self)
        with self._lock:
            self._aio_channels.add(channel)
        return channel

    def _forget(self, channel) -> None:
        with self._lock:
            self._aio_channels.discard(channel)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the proxyless client is closed")

    # ---- calls (the channels' transports) ---------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.settings.default_timeout_s

    def _start_mirrors(self, slug: str, variants: Sequence[Variant], request: bytes):
        if self._home.in_thread:   # on the mirrors' own loop: the router's way
            return self._mirrors.start(slug, variants, request)
        return ShadowFromThread(self._home.call, self._mirrors, slug, variants, request)

    def call_sync(self, path: str, request: bytes, metadata, timeout: float | None) -> tuple[bytes, Metadata]:
        """One unary call, raw bytes in and out, in the caller's thread; raises DispatchError."""
        if self._closed:
            raise _closed_error()
        if self._config.table is None and not self._home.in_thread:   # never block the client's own loop
            budget = self._wait_budget(timeout)
            if budget > 0:
                self._ready.wait(budget)
        return call_sync(self._dispatcher, self._sync_pool, self._start_mirrors, path, request, metadata,
                         self._timeout(timeout))

    async def call_async(self, pool: BackendPool, path: str, request: bytes, metadata,
                         timeout: float | None) -> tuple[bytes, Metadata]:
        """One unary call on the running loop over `pool`; raises DispatchError."""
        if self._closed:
            raise _closed_error()
        if self._config.table is None:
            budget = self._wait_budget(timeout)
            if budget > 0:
                try:
                    await asyncio.wait_for(self._ready_future(), budget)
                except TimeoutError:
                    pass
        return await call_async(self._dispatcher, pool, self._start_mirrors, path, request, metadata,
                                self._timeout(timeout))

    def call_future(self, path: str, request: bytes, metadata, timeout: float | None) -> concurrent.futures.Future:
        """One unary call run on the client's loop (the sync channel's future())."""
        if self._closed:
            raise _closed_error()
        return asyncio.run_coroutine_threadsafe(
            self.call_async(self._mirror_pool, path, request, metadata, timeout), self._home.loop)

    # ---- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Release everything: the etcd watch, the lease (the record goes at once), the
        mirrors and every channel to the backends. Idempotent. From the loop of a client
        made with start_in_loop(), use `await aclose()`."""
        if self._home.in_thread:
            raise RuntimeError("close() would block the client's own event loop: await client.aclose()")
        if not self._begin_close():
            return
        try:
            self._home.run(self._stop(), self.settings.close_timeout_s)
        except Exception as err:  # noqa: BLE001 - closing goes on; the lease expires by TTL
            log.warning("proxyless client %s: incomplete close: %s", self.client_id, err)
        self._home.stop(self.settings.close_timeout_s)
        log.info("proxyless client %s closed", self.client_id)

    async def aclose(self) -> None:
        """close() from inside an event loop: the aio channels of this loop are closed
        here; the rest here too when this is the client's own loop, else in a thread."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = [c for c in self._aio_channels if c._loop is loop]
        await asyncio.gather(*(c.close() for c in mine), return_exceptions=True)
        if self._home.loop is not loop:
            await asyncio.to_thread(self.close)
            return
        if self._begin_close():
            await self._stop()
            log.info("proxyless client %s closed", self.client_id)

    def _begin_close(self) -> bool:
        """Mark closed and close the channels; False when already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            channels = list(self._aio_channels)
            self._aio_channels.clear()
        for channel in channels:
            channel._close_from_client(self.settings.close_timeout_s)
        self._sync_pool.close()
        return True

    def __enter__(self) -> "ProxylessClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "ProxylessClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _closed_error() -> DispatchError:
    return DispatchError(grpc.StatusCode.UNAVAILABLE, "the proxyless client is closed")
