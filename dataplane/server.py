"""`tsplit-router`: the data-plane router process (SPEC section 5, issue 3).

One router = the native core (dataplane/native, `dataplane._native`: the gRPC and REST
server, backend connections, routing, mirrors and counters, on one tokio runtime per
thread, --threads, one per CPU by default); this process's event loop runs what is not on
the request path: a ConfigSync that follows etcd and hands the core each new table
(dataplane.native_router), a Registration that keeps its lease-bound record, and with
--metrics-listen a Prometheus endpoint over the core's counters. start_router() runs one
in the current event loop (tests); main() is the console script. With --workers N,
main() supervises N router processes that share the listen port (SO_REUSEPORT) and each
register as their own router (router id `<id>-<i>`, metrics port + i).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from dataplane import native_router
from dataplane.backends import SERVICE
from dataplane.config_sync import ConfigSync
from dataplane.registration import Registration
from dataplane.settings import RouterSettings, available_cpus, join_host_port, parse_settings, split_host_port
from dataplane.stats import MetricsServer, StatsCollector
from dataplane.supervision import RestartBackoff, spawn_child
from tsplit import package_version
from tsplit.etcd import Etcd
from tsplit.etcd_server import free_port
from tsplit.layout import Layout
from tsplit.settings import to_argv
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
    stats: native_router.NativeStats
    sync: ConfigSync
    mirrors: "NativeMirrors"
    registration: Registration
    _stop: Callable[[float | None], "asyncio.Future"] = field(repr=False)

    async def stop(self, grace_s: float | None = None) -> None:
        await self._stop(self.settings.shutdown_grace_s if grace_s is None else grace_s)


SERVER_NAME = "tsplit-router"


def _addresses(settings: RouterSettings, host: str, port: int) -> tuple[str, str]:
    """(the address clients dial, the one the router record advertises)."""
    address = join_host_port(host, port)
    return address, settings.advertise or (
        join_host_port(socket.gethostname(), port) if host in ("0.0.0.0", "::") else address)


def _metrics_server(settings: RouterSettings, stats, mirrors, sync: ConfigSync) -> MetricsServer | None:
    """The Prometheus endpoint of --metrics-listen (None when off)."""
    if not settings.metrics_listen:
        return None
    m_host, m_port = split_host_port(settings.metrics_listen, "metrics-listen")
    collector = StatsCollector(
        stats,
        gauges=lambda: {"mirrors_inflight": mirrors.inflight, "config_ready": float(sync.table is not None),
                        "config_revision": sync.revision},
        applied=sync.applied_versions)   # a copy: the collector runs on its own thread
    return MetricsServer(collector, m_host, m_port)


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


async def start_router(settings: RouterSettings) -> RunningRouter:
    """Start a router in the running event loop: the core serves at once (health
    NOT_SERVING until the first etcd snapshot is applied) on every thread it starts; this
    loop follows etcd, hands it each new table, registers the router and serves
    Prometheus from the core's counters."""
    router_id = settings.router_id_or_new()
    layout = Layout(settings.etcd_prefix)
    host, port = split_host_port(settings.listen, "listen")
    threads = settings.threads or max(1, available_cpus() // settings.workers)
    config = {
        "host": host, "port": port, "threads": threads,
        "connections_per_backend": settings.backend_connections, "reuse_port": settings.reuse_port, "server_name": SERVER_NAME,
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
    metrics = _metrics_server(settings, stats, mirrors, sync)
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
                     threads=settings.threads or max(1, available_cpus() // settings.workers),
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
    if settings.workers > 1:
        return supervise_workers(settings)
    try:
        run_event_loop(serve(settings), settings.event_loop)
    except OSError as err:
        log.error("router could not start: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
