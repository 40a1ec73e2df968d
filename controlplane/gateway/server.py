"""tsplit-gateway: the REST gateway process, and an in-process starter for tests and `tsplit up`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import uvicorn

from controlplane import event_loop
from controlplane.auth import AuthSettings, TokenVerifier, bearer_token, require_mutation_role
from controlplane.gateway.app import build_app
from controlplane.gateway.client import CallTimeouts, ControlPlaneClient
from controlplane.gateway.http_protocol import GatewayHttpProtocol
from controlplane.gateway.routes import Handlers
from controlplane.interceptors import VerifiedTokens

log = logging.getLogger("tsplit.gateway")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_BODY_BYTES = 64 * 1024


def split_host_port(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """"host:port", "[::1]:port" or ":port" (":0" picks a free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    host = host.strip("[]") or default_host
    return host, int(port)


@dataclass(frozen=True)
class GatewaySettings:
    controlplane: str  # host:port of the control plane (or of a load balancer before its replicas)
    auth: AuthSettings
    listen: str = DEFAULT_LISTEN
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeouts: CallTimeouts = CallTimeouts()

    def __post_init__(self) -> None:
        split_host_port(self.listen)
        split_host_port(self.controlplane)
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.timeouts.connect_s <= 0 or self.timeouts.mutation_s <= 0:
            raise ValueError("timeouts must be positive")


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsplit-gateway", description="REST gateway of the tsplit control plane")
    p.add_argument("--listen", default=env.get("TSPLIT_GATEWAY_LISTEN", DEFAULT_LISTEN),
                   help="host:port to serve HTTP on; :0 picks a free port (TSPLIT_GATEWAY_LISTEN)")
    p.add_argument("--controlplane", default=env.get("TSPLIT_CONTROLPLANE"),
                   help="host:port of the gRPC control plane (TSPLIT_CONTROLPLANE)")
    # String defaults go through `type` like flags do, so a bad variable is a usage error.
    p.add_argument("--max-body-bytes", type=int,
                   default=env.get("TSPLIT_GATEWAY_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES)),
                   help="larger bodies answer 413 (TSPLIT_GATEWAY_MAX_BODY_BYTES)")
    p.add_argument("--controlplane-timeout", type=float,
                   default=env.get("TSPLIT_GATEWAY_CONTROLPLANE_TIMEOUT", str(CallTimeouts.connect_s)),
                   help="seconds to wait for the control plane before 503 unavailable "
                        "(TSPLIT_GATEWAY_CONTROLPLANE_TIMEOUT)")
    p.add_argument("--jwt-public-key", default=env.get("TSPLIT_JWT_PUBLIC_KEY"),
                   help="PEM public key that verifies tokens (TSPLIT_JWT_PUBLIC_KEY)")
    p.add_argument("--jwks", default=env.get("TSPLIT_JWKS"), help="JWKS file that verifies tokens (TSPLIT_JWKS)")
    p.add_argument("--jwt-issuer", default=env.get("TSPLIT_JWT_ISSUER"), help="required iss (TSPLIT_JWT_ISSUER)")
    p.add_argument("--jwt-audience", default=env.get("TSPLIT_JWT_AUDIENCE"),
                   help="required aud (TSPLIT_JWT_AUDIENCE)")
    return p


def settings_from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> GatewaySettings:
    env = os.environ if env is None else env
    parser = _parser(env)
    args = parser.parse_args(argv)
    if not args.controlplane:
        parser.error("--controlplane (or TSPLIT_CONTROLPLANE) is required")
    if bool(args.jwt_public_key) == bool(args.jwks):
        parser.error("give exactly one of --jwt-public-key (PEM file) or --jwks (JWKS file): "
                     "the gateway verifies every token")
    try:
        auth = AuthSettings(public_key_path=args.jwt_public_key, jwks_path=args.jwks,
                            issuer=args.jwt_issuer, audience=args.jwt_audience)
        return GatewaySettings(
            controlplane=args.controlplane, auth=auth, listen=args.listen, max_body_bytes=args.max_body_bytes,
            timeouts=CallTimeouts(connect_s=args.controlplane_timeout))
    except ValueError as err:
        parser.error(str(err))


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process handles signals once, at the top."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class RunningGateway:
    """A gateway serving in this event loop; stop() closes it gracefully."""

    def __init__(self, server: _EmbeddedServer, task: asyncio.Task, client: ControlPlaneClient, url: str):
        self._server, self._task, self._client = server, task, client
        self.url = url

    async def stop(self) -> None:
        self._server.should_exit = True
        try:
            await self._task
        finally:
            await self._client.close()


def _bind(listen: str) -> socket.socket:
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it Nagle and delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {err.strerror}") from None
    return sock


async def start_gateway(settings: GatewaySettings, startup_timeout_s: float = 10.0) -> RunningGateway:
    verifier = VerifiedTokens(TokenVerifier(settings.auth))
    sock = _bind(settings.listen)
    client = ControlPlaneClient(settings.controlplane, settings.timeouts)
    handlers = Handlers(client, lambda header: verifier.verify(bearer_token(header)),
                        require_mutation_role, settings.max_body_bytes)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    config = uvicorn.Config(build_app(handlers), lifespan="off", log_config=None, server_header=False,
                            timeout_graceful_shutdown=5, access_log=False, http=GatewayHttpProtocol)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout_s
    while not server.started:
        if task.done() or loop.time() > deadline:
            server.should_exit = True
            await client.close()
            sock.close()
            raise RuntimeError(f"the gateway did not start on {settings.listen}")
        await asyncio.sleep(0.01)
    return RunningGateway(server, task, client, url)


async def serve(settings: GatewaySettings) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully (in-flight requests finish)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        gateway = await start_gateway(settings)
    except (OSError, ValueError, RuntimeError) as err:  # a port in use, an unreadable key file
        log.error("cannot start: %s", err)
        return 1
    log.info("tsplit-gateway listening on %s (control plane %s)", gateway.url, settings.controlplane)
    await stop.wait()
    log.info("tsplit-gateway stopping")
    await gateway.stop()
    log.info("tsplit-gateway stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(argv)  # a bad flag exits 2 with a message naming it
    return event_loop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
