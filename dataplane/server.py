"""`tsplit-router`: the data-plane router process (SPEC section 5, issue 3).

One router = one gRPC server with the v2 inference service, gRPC health and reflection
(--server aio, the default: a grpc.aio server on uvloop; --server sync: a sync grpc server
with a thread pool, see dataplane.sync_transport); a ConfigSync that follows
etcd; a Registration that keeps its lease-bound record; and, with --metrics-listen, a
Prometheus endpoint, all on one event loop. start_router() runs one in the current event
loop (tests); main() is the console script. With --workers N (or auto: one per CPU),
main() supervises N worker processes that share the listen port (SO_REUSEPORT) and each
register as their own router (router id `<id>-<i>`, metrics port + i). Why these
defaults: BENCHMARKS.md, "Tries".
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dataplane.backends import SyncBackendPool
from dataplane.config_sync import ConfigSync
from dataplane.dispatch import Dispatcher, apply_deferred
from dataplane.endpoint_refs import EndpointRefs
from dataplane.shadow_process import MirrorProcess
from dataplane.registration import Registration
from dataplane.router import NOT_READY_MESSAGE, SERVER_NAME, SERVICE, BackendPool, InferenceRouter
from tsplit import package_version
from dataplane.stats import MetricsServer, RouterStats, StatsCollector, settle_on_loop
from dataplane.settings import RouterSettings, available_cpus, join_host_port, parse_settings, split_host_port
from tsplit.settings import to_argv
from dataplane.supervision import RestartBackoff, spawn_child
from dataplane.sync_transport import SyncInferenceRouter, SyncServer
from tsplit.etcd import Etcd
from tsplit.etcd_server import free_port
from tsplit.layout import Layout
from tsplit.status import LATENCY_BUCKETS_MS

log = logging.getLogger("tsplit.router")

@dataclass
class RunningRouter:
    """A started router. `address` is what clients dial; stop() is graceful."""

    router_id: str
    address: str
    port: int
    metrics_url: str
    settings: RouterSettings
    stats: RouterStats
    sync: ConfigSync
    mirrors: MirrorProcess
    registration: Registration
    _stop: Callable[[float | None], "asyncio.Future"] = field(repr=False)

    async def stop(self, grace_s: float | None = None) -> None:
        await self._stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)


def _server_options(settings: RouterSettings) -> list[tuple[str, object]]:
    max_bytes = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        # Clients behind NATs and load balancers keep idle connections alive with pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


class AioServer:
    """The grpc.aio server (`--server aio`), with the interface of SyncServer."""

    def __init__(self, options: list[tuple[str, object]]) -> None:
        self.grpc = grpc.aio.server(options=options)
        self.health = health.aio.HealthServicer()

    def add_insecure_port(self, address: str) -> int:
        return self.grpc.add_insecure_port(address)

    async def start(self) -> None:
        await self.grpc.start()

    async def set_health(self, name: str, status) -> None:
        await self.health.set(name, status)

    async def enter_graceful_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        await self.grpc.stop(grace_s)


async def _apply_counts_regularly(stats: RouterStats, interval_s: float = 0.05) -> None:
    """The sync server's serving threads defer their counts; apply them on the loop."""
    while True:
        await asyncio.sleep(interval_s)
        stats.settle()


def _addresses(settings: RouterSettings, host: str, port: int) -> tuple[str, str]:
    """(the address clients dial, the one the router record advertises)."""
    address = join_host_port(host, port)
    return address, settings.advertise or (
        join_host_port(socket.gethostname(), port) if host in ("0.0.0.0", "::") else address)


def _metrics_server(settings: RouterSettings, stats, mirrors, sync: ConfigSync,
                    settle: Callable[[], object]) -> MetricsServer | None:
    """The Prometheus endpoint of --metrics-listen (None when off)."""
    if not settings.metrics_listen:
        return None
    m_host, m_port = split_host_port(settings.metrics_listen, "metrics-listen")
    collector = StatsCollector(
        stats,
        gauges=lambda: {"mirrors_inflight": mirrors.inflight, "config_ready": float(sync.table is not None),
                        "config_revision": sync.revision},
        applied=sync.applied_versions,   # a copy: the collector runs on its own thread
        settle=settle)
    return MetricsServer(collector, m_host, m_port)


async def start_router(settings: RouterSettings) -> RunningRouter:
    """Start a router in the running event loop; it serves at once and reports
    NOT_SERVING (health) until the first etcd snapshot is applied."""
    if settings.server == "native":
        return await start_native_router(settings)
    router_id = settings.router_id_or_new()
    layout = Layout(settings.etcd_prefix)
    etcd = Etcd(settings.etcd)
    stats = RouterStats()
    backends = BackendPool()
    # Shadow copies are sent and compared by a separate, lower-priority process: in this
    # one they took GIL time and a core from the champion's answers (BENCHMARKS.md, "Tries").
    mirrors = MirrorProcess(asyncio.get_running_loop(), stats, settings.max_inflight_mirrors,
                            settings.mirror_timeout_s)
    registration: Registration | None = None
    endpoints = EndpointRefs()

    def on_changes(table, changes) -> None:
        """O(changed): with 10,000 deployments a change must not walk every route."""
        unused = False
        for change in changes:
            unused |= bool(endpoints.replace(change.old, change.new))
            if change.new is None:
                stats.forget(change.slug)
        if unused:
            backends.retain(endpoints)
            if sync_backends is not None:
                sync_backends.retain(endpoints)
        if changes and registration is not None:
            registration.notify_applied()

    sync = ConfigSync(etcd, layout, on_changes=on_changes)

    sync_backends: SyncBackendPool | None = None
    count_applier: asyncio.Task | None = None
    if settings.server == "sync":
        pending: collections.deque = collections.deque()
        dispatcher = Dispatcher(lambda: sync.table, stats, server_name=SERVER_NAME, server_version=package_version(),
                                not_ready_message=NOT_READY_MESSAGE, deferred=pending)
        stats.settle = functools.partial(apply_deferred, pending)
        sync_backends = SyncBackendPool()
        server = SyncServer(settings.threads, _server_options(settings))
        handler = SyncInferenceRouter(dispatcher, sync_backends, mirrors.start,
                                      settings.request_timeout_s).handler()
        count_applier = asyncio.create_task(_apply_counts_regularly(stats), name="router-counts")
    else:
        server = AioServer(_server_options(settings))
        handler = None
        server.grpc.add_registered_method_handlers(SERVICE, InferenceRouter(
            lambda: sync.table, backends, stats, mirrors,
            default_timeout_s=settings.request_timeout_s).method_handlers())
    if handler is not None:
        server.grpc.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(server.health, server.grpc)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server.grpc)
    for name in ("", SERVICE):
        await server.set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    host, port = split_host_port(settings.listen, "listen")
    try:
        bound = server.add_insecure_port(join_host_port(host, port))
    except RuntimeError:
        bound = 0
    if not bound:
        if count_applier is not None:
            count_applier.cancel()
        await etcd.close()
        raise OSError(f"cannot listen on {settings.listen} (address in use?)")
    address, advertise = _addresses(settings, host, bound)
    metrics = _metrics_server(settings, stats, mirrors, sync, settle_on_loop(asyncio.get_running_loop(), stats)
                              if settings.server == "sync" else lambda: None)
    metrics_url = metrics.url if metrics else ""

    registration = Registration(etcd, layout, router_id, "router", advertise, metrics_url,
                                applied=lambda: sync.applied, stats=stats.snapshot)
    await server.start()
    await sync.start()
    await registration.start()

    async def serve_when_ready() -> None:
        await sync.ready.wait()
        for name in ("", SERVICE):
            await server.set_health(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("router %s serving on %s (config revision %d, %d deployments)",
                 router_id, address, sync.revision, len(sync.applied))

    readiness = asyncio.create_task(serve_when_ready(), name="router-readiness")
    log.info("router %s listening on %s, etcd %s prefix %s, metrics %s; waiting for the first snapshot",
             router_id, address, settings.etcd, settings.etcd_prefix, metrics_url or "off")

    async def stop(grace_s: float) -> None:
        log.info("router %s stopping (grace %.1f s)", router_id, grace_s)
        readiness.cancel()
        await server.enter_graceful_shutdown()
        await server.stop(grace_s)
        if count_applier is not None:
            count_applier.cancel()
            stats.settle()
        await mirrors.stop(min(grace_s, 1.0))
        await registration.stop()
        await sync.stop()
        await backends.close()
        if sync_backends is not None:
            sync_backends.close()
        if metrics is not None:
            await metrics.stop()
        await etcd.close()
        log.info("router %s stopped", router_id)

    return RunningRouter(router_id, address, bound, metrics_url, settings, stats, sync, mirrors, registration,
                         stop)


class NativeMirrors:
    """The native core's shadow copies in flight (RunningRouter.mirrors)."""

    def __init__(self, core) -> None:
        self._core = core

    @property
    def inflight(self) -> int:
        try:
            return self._core.mirrors_inflight()
        except RuntimeError:  # stopped
            return 0

    async def stop(self, grace_s: float) -> None:
        """The core ends its mirrors when it stops."""


async def start_native_router(settings: RouterSettings) -> RunningRouter:
    """The router on the native core (dataplane/native): the core serves gRPC on every
    thread it starts; this loop follows etcd, hands it each new table, registers the
    router and serves Prometheus from the core's counters."""
    from dataplane import native_router

    router_id = settings.router_id_or_new()
    layout = Layout(settings.etcd_prefix)
    host, port = split_host_port(settings.listen, "listen")
    threads = settings.workers if settings.workers > 1 else available_cpus()
    config = {
        "host": host, "port": port, "threads": threads, "reuse_port": settings.reuse_port, "server_name": SERVER_NAME,
        "server_version": package_version(), "request_timeout_s": settings.request_timeout_s,
        "max_message_bytes": settings.max_message_mb * 1024 * 1024,
        "max_inflight_mirrors": settings.max_inflight_mirrors, "mirror_timeout_s": settings.mirror_timeout_s,
        "latency_buckets_ms": list(LATENCY_BUCKETS_MS), "auth": settings.auth_config(),
        "reflection": native_router.reflection_spec((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME,
                                                     "grpc.reflection.v1.ServerReflection")),
    }
    try:
        core = await asyncio.to_thread(native_router.start, config)
    except OSError as err:
        raise OSError(f"cannot listen on {settings.listen}: {err}") from None
    etcd = Etcd(settings.etcd)
    stats = native_router.NativeStats(core)
    registration: Registration | None = None
    full_applied = False

    def on_changes(table, changes) -> None:
        nonlocal full_applied
        if not full_applied:
            problems = core.swap_table(native_router.snapshot_json(table))
            full_applied = True
            log.info("router %s serving on %s (config revision %d, %d deployments)",
                     router_id, address, table.revision, len(table.routes))
        elif changes:
            problems = core.apply_changes(native_router.changes_json(table, changes))
        else:
            problems = []
        for problem in problems:
            log.warning("route left out: %s", problem)
        if changes and registration is not None:
            registration.notify_applied()

    sync = ConfigSync(etcd, layout, on_changes=on_changes)
    address, advertise = _addresses(settings, host, core.port)
    mirrors = NativeMirrors(core)
    metrics = _metrics_server(settings, stats, mirrors, sync, lambda: None)
    metrics_url = metrics.url if metrics else ""
    registration = Registration(etcd, layout, router_id, "router", advertise, metrics_url,
                                applied=lambda: sync.applied, stats=stats.snapshot)
    await sync.start()
    await registration.start()
    log.info("router %s (native, %d threads) listening on %s, etcd %s prefix %s, metrics %s; "
             "waiting for the first snapshot", router_id, threads, address, settings.etcd, settings.etcd_prefix,
             metrics_url or "off")

    async def stop(grace_s: float) -> None:
        log.info("router %s stopping (grace %.1f s)", router_id, grace_s)
        await asyncio.to_thread(core.stop, grace_s)
        await registration.stop()
        await sync.stop()
        if metrics is not None:
            await metrics.stop()
        await etcd.close()
        log.info("router %s stopped", router_id)

    return RunningRouter(router_id, address, core.port, metrics_url, settings, stats, sync, mirrors, registration,
                         stop)


async def serve(settings: RouterSettings) -> None:
    """Run one router until SIGTERM or SIGINT, then stop gracefully."""
    running = await start_router(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await running.stop()


def _worker_argv(settings: RouterSettings, index: int, port: int) -> list[str]:
    host, _ = split_host_port(settings.listen, "listen")
    worker = replace(settings, listen=join_host_port(host, port), workers=1, reuse_port=True,
                     router_id=f"{settings.router_id_or_new()}-{index}")
    if settings.metrics_listen:
        m_host, m_port = split_host_port(settings.metrics_listen, "metrics-listen")
        worker = replace(worker, metrics_listen=join_host_port(m_host, m_port + index if m_port else 0))
    return [sys.executable, "-m", "dataplane.server", *to_argv(worker)]


def supervise_workers(settings: RouterSettings) -> int:
    """Run settings.workers router processes on one port; restart one that dies; on
    SIGTERM/SIGINT stop them all gracefully."""
    host, port = split_host_port(settings.listen, "listen")
    port = port or free_port(host)
    settings = replace(settings, router_id=settings.router_id_or_new())
    argvs = [_worker_argv(settings, i, port) for i in range(settings.workers)]
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [spawn_child(argv) for argv in argvs]
    born = [time.monotonic()] * len(children)
    backoffs = [RestartBackoff() for _ in children]
    log.info("router workers: %d on %s (pids %s)", len(children), join_host_port(host, port),
             [c.pid for c in children])
    restart_at: dict[int, float] = {}
    while not stopping:
        time.sleep(0.2)
        for i, child in enumerate(children):
            if stopping or child.poll() is None:
                continue
            if i not in restart_at:
                delay = backoffs[i].delay(time.monotonic() - born[i])
                log.error("router worker %d (pid %d) exited with %s; restarting in %.0f s", i, child.pid,
                          child.returncode, delay)
                restart_at[i] = time.monotonic() + delay
            elif time.monotonic() >= restart_at[i]:
                del restart_at[i]
                children[i], born[i] = spawn_child(argvs[i]), time.monotonic()
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


def run_event_loop(main_coroutine, event_loop: str):
    """Run main_coroutine to its end on uvloop (when asked for and installed) or asyncio's loop."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; running on asyncio's event loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main_coroutine)
    return asyncio.run(main_coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1 and settings.server != "native":  # the native core uses every core itself
        return supervise_workers(settings)
    try:
        run_event_loop(serve(settings), settings.event_loop)
    except OSError as err:
        log.error("router could not start: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
