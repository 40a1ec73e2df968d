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

import argparse
import asyncio
import collections
import functools
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
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
from dataplane.supervision import RestartBackoff, spawn_child
from dataplane.sync_transport import SyncInferenceRouter, SyncServer
from tsplit.etcd import Etcd, parse_endpoints
from tsplit.etcd_server import free_port
from tsplit.layout import DEFAULT_PREFIX, Layout

log = logging.getLogger("tsplit.router")

ENV_PREFIX = "TSPLIT_ROUTER_"
SHARED_FLAGS = ("etcd", "etcd_prefix", "log_level")
SERVER_KINDS = ("aio", "sync")   # TSPLIT_<FLAG>; the rest TSPLIT_ROUTER_<FLAG>
EVENT_LOOPS = ("uvloop", "asyncio")


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' (host 127.0.0.1) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--{what} {text!r} is not host:port")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class RouterSettings:
    listen: str = "127.0.0.1:8001"
    etcd: str = "127.0.0.1:2379"
    etcd_prefix: str = DEFAULT_PREFIX
    metrics_listen: str = ""          # host:port of the Prometheus endpoint; empty: none
    router_id: str = ""               # empty: r-<random>
    advertise: str = ""               # address in the router record; empty: the bound one
    # Processes of main(), each its own router ('auto': one per CPU). One by default: a
    # worker per CPU served 1.2-1.35x the requests but doubled memory and cold start with
    # 10,000 deployments and slowed propagation (BENCHMARKS.md, "Tries").
    workers: int = 1
    # grpc.aio with uvloop and direct Cython backend calls: the least CPU per request of the
    # tries (the sync server spent 20-30 % more); BENCHMARKS.md, "Tries".
    server: str = "aio"               # "aio": grpc.aio server; "sync": sync grpc server, a thread pool
    event_loop: str = "uvloop"        # "uvloop" (when installed) or "asyncio"
    threads: int = 16                 # serving threads of --server sync
    reuse_port: bool = False          # share the listen port (set for --workers' children)
    max_inflight_mirrors: int = 256
    mirror_timeout_s: float = 10.0
    request_timeout_s: float = 300.0  # backend deadline when the client sets none
    max_message_mb: int = 64
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        split_host_port(self.listen, "listen")
        if self.metrics_listen:
            split_host_port(self.metrics_listen, "metrics-listen")
        parse_endpoints(self.etcd)
        Layout(self.etcd_prefix)
        if self.router_id and ("/" in self.router_id or not self.router_id.isprintable()):
            raise ValueError(f"--router-id {self.router_id!r} must be printable and without '/'")
        if self.server not in SERVER_KINDS:
            raise ValueError(f"--server must be one of {', '.join(SERVER_KINDS)}, not {self.server!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        for name in ("workers", "threads", "max_inflight_mirrors", "max_message_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("mirror_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be positive (seconds)")
        if self.shutdown_grace_s < 0:
            raise ValueError("--shutdown-grace must not be negative (seconds)")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"--log-level {self.log_level!r} is not a logging level")

    def router_id_or_new(self) -> str:
        """--router-id, or a new random one (each call makes another)."""
        return self.router_id or f"r-{secrets.token_hex(4)}"


def available_cpus() -> int:
    """The CPUs this process may run on (--workers auto)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _flag(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def _env_name(name: str) -> str:
    base = name.removesuffix("_s").upper()
    return f"TSPLIT_{base}" if name in SHARED_FLAGS else f"{ENV_PREFIX}{base}"


_HELP = {
    "listen": "gRPC listen address host:port (':0' picks a free port)",
    "etcd": "etcd endpoints, comma-separated host:port",
    "etcd_prefix": "etcd key prefix",
    "metrics_listen": "Prometheus metrics host:port (empty: off)",
    "router_id": "this router's id in etcd (default r-<random>)",
    "advertise": "address other processes reach this router at (default: the bound address)",
    "workers": "worker processes sharing the listen port, each its own router; 'auto': one per CPU",
    "server": "gRPC server: 'aio' (grpc.aio, one event loop) or 'sync' (thread pool, sync channels)",
    "event_loop": "the process's event loop: 'uvloop' (falls back to asyncio's when not installed) or 'asyncio'",
    "threads": "serving threads of --server sync",
    "reuse_port": "share the listen port with other processes (SO_REUSEPORT)",
    "max_inflight_mirrors": "shadow copies in flight per router; past it copies are dropped and counted",
    "mirror_timeout_s": "deadline of a shadow copy, seconds",
    "request_timeout_s": "backend deadline when the client sets none, seconds",
    "max_message_mb": "largest request or response accepted from clients, MiB",
    "shutdown_grace_s": "seconds in-flight requests get to finish on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> RouterSettings:
    """Flags first, then TSPLIT_* variables, then defaults. Raises SystemExit on bad input."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="tsplit-router", description="tsplit data-plane router (OIP v2)")
    defaults = RouterSettings()
    for f in fields(RouterSettings):
        default = getattr(defaults, f.name)
        help_text = f"{_HELP[f.name]} (env {_env_name(f.name)}; default {default!r})"
        if isinstance(default, bool):
            parser.add_argument(_flag(f.name), dest=f.name, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            metavar = "SECONDS" if f.name.endswith("_s") else f.name.upper()
            parser.add_argument(_flag(f.name), dest=f.name, type=str, default=None, metavar=metavar, help=help_text)
    args = parser.parse_args(argv)
    values = {}
    for f in fields(RouterSettings):
        raw = getattr(args, f.name)
        if raw is None:
            raw = env.get(_env_name(f.name))
        if raw is None:
            continue
        default = getattr(defaults, f.name)
        try:
            if f.name == "workers" and raw.strip().lower() == "auto":
                values[f.name] = available_cpus()
            elif isinstance(default, bool):
                values[f.name] = raw if isinstance(raw, bool) else raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        except ValueError:
            parser.error(f"{_flag(f.name)} {raw!r} is not a {type(default).__name__}")
    try:
        return RouterSettings(**values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


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


async def start_router(settings: RouterSettings) -> RunningRouter:
    """Start a router in the running event loop; it serves at once and reports
    NOT_SERVING (health) until the first etcd snapshot is applied."""
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
    address = join_host_port(host, bound)
    advertise = settings.advertise or (
        join_host_port(socket.gethostname(), bound) if host in ("0.0.0.0", "::") else address)

    metrics = None
    if settings.metrics_listen:
        m_host, m_port = split_host_port(settings.metrics_listen, "metrics-listen")
        collector = StatsCollector(
            stats,
            gauges=lambda: {"mirrors_inflight": mirrors.inflight, "config_ready": float(sync.table is not None),
                            "config_revision": sync.revision},
            applied=sync.applied_versions,   # a copy: the collector runs on its own thread
            settle=settle_on_loop(asyncio.get_running_loop(), stats) if settings.server == "sync" else lambda: None)
        metrics = MetricsServer(collector, m_host, m_port)
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
    argv = [sys.executable, "-m", "dataplane.server"]
    for f in fields(RouterSettings):
        value = getattr(worker, f.name)
        if isinstance(value, bool):
            argv += [_flag(f.name)] if value else []
        elif value != "":
            argv += [_flag(f.name), str(value)]
    return argv


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
