"""The control-plane process: the ControlPlane service, gRPC health and reflection on one
grpc.aio server over etcd; `tsplit-controlplane` runs it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.auth import TokenVerifier
from controlplane import event_loop
from controlplane.guardrails.election import LeaderElection
from controlplane.interceptors import ControlPlaneInterceptor, VerifiedTokens
from controlplane.service import ControlPlaneService
from controlplane.settings import ControlPlaneSettings, SettingsError, settings_from_args
from controlplane.store import ControlPlaneStore
from tsplit.etcd import Etcd
from tsplit.layout import Layout
from tsplit.settings import join_host_port, parse_host_port
from tsplit.v1 import controlplane_pb2, controlplane_pb2_grpc

log = logging.getLogger("tsplit.controlplane")

SERVICE_NAME = controlplane_pb2.DESCRIPTOR.services_by_name["ControlPlane"].full_name
# Health service name that answers SERVING only while etcd answers (the gateway's /readyz).
READY_SERVICE = SERVICE_NAME + ".Ready"  # controlplane.gateway.client.READY_SERVICE
_ETCD_PROBE_S = 1.5


class ReadinessHealth(health.aio.HealthServicer):
    """gRPC health where READY_SERVICE probes etcd at every check (one count-only range):
    liveness stays "" / SERVICE_NAME, readiness means the control plane can reach storage."""

    def __init__(self, etcd: Etcd):
        super().__init__()
        self._etcd = etcd

    async def Check(self, request, context):
        if request.service != READY_SERVICE:
            return await super().Check(request, context)
        try:
            await asyncio.wait_for(self._etcd.revision(), _ETCD_PROBE_S)
        except Exception:  # any failure to reach etcd: not ready
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class ControlPlaneServer:
    """A started control plane: `.address` ("127.0.0.1:<port>"), `.port`, `await .stop()`."""

    def __init__(self, server: grpc.aio.Server, health_servicer, etcd: Etcd, host: str, port: int, grace_s: float):
        self._server, self._health, self._etcd = server, health_servicer, etcd
        self.host, self.port, self.grace_s = host, port, grace_s
        self.election: LeaderElection | None = None  # the guardrail judge's, None when off
        self.judge = None  # the guardrail judge (controlplane.guardrails.judge.Judge) once loaded
        self._election_task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING at once, then in-flight calls get grace_s seconds to finish."""
        await self._health.enter_graceful_shutdown()
        if self._election_task is not None:  # resigns: the next replica takes over at once
            self._election_task.cancel()
            await asyncio.wait({self._election_task}, timeout=2.0)
        await self._server.stop(self.grace_s if grace_s is None else grace_s)
        await self._etcd.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def start_controlplane(settings: ControlPlaneSettings) -> ControlPlaneServer:
    """Serve on settings.listen (port 0 picks a free one). etcd need not be up yet: calls
    answer UNAVAILABLE until it is."""
    verifier = VerifiedTokens(TokenVerifier(settings.auth))
    etcd = Etcd(settings.etcd_endpoints, timeout=settings.store.write_timeout_s)
    store = ControlPlaneStore(etcd, Layout(settings.etcd_prefix), settings.store)
    server = grpc.aio.server(interceptors=[ControlPlaneInterceptor(verifier)])
    controlplane_pb2_grpc.add_ControlPlaneServicer_to_server(ControlPlaneService(store), server)
    health_servicer = ReadinessHealth(etcd)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    host, _ = parse_host_port(settings.listen)
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as err:
        await etcd.close()
        raise OSError(f"cannot listen on {settings.listen}: {err}") from None
    await server.start()
    cp = ControlPlaneServer(server, health_servicer, etcd, host, port, settings.grace_s)
    if settings.guardrails:
        layout = Layout(settings.etcd_prefix)
        identity = f"controlplane {join_host_port(host, port)}"
        cp.election = LeaderElection(etcd, layout.leader("guardrails"), identity, settings.guardrails_lease_ttl_s)
        cp._election_task = asyncio.get_running_loop().create_task(
            _guardrails(cp, etcd, layout, store, identity), name="guardrails")
    return cp


async def _guardrails(cp: ControlPlaneServer, etcd: Etcd, layout: Layout, store: ControlPlaneStore,
                      identity: str) -> None:
    """Load the judge (numpy and scipy take seconds to import: in a thread, so the control
    plane serves meanwhile), then campaign for the leader key and judge while holding it."""
    judge_module = await asyncio.to_thread(importlib.import_module, "controlplane.guardrails.judge")
    cp.judge = judge_module.Judge(etcd, layout, store, identity=identity)
    assert cp.election is not None
    await cp.election.run(cp.judge.run)


async def serve(settings: ControlPlaneSettings) -> int:
    try:
        server = await start_controlplane(settings)
    except (OSError, ValueError) as err:
        log.error("cannot start: %s", err)
        return 1
    log.info("control plane listening on %s (etcd %s, prefix %s)",
             server.address, ",".join(settings.etcd_endpoints), settings.etcd_prefix)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping: in-flight calls get %gs", settings.grace_s)
    await server.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(argv)
    except SettingsError as err:
        print(f"tsplit-controlplane: error: {err}", file=sys.stderr)
        return 2
    return event_loop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
