"""tsplit-gateway: the REST gateway process, and an in-process starter for tests and `tsplit up`."""

from __future__ import annotations

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
from tsplit.settings import SettingsError, check_host_port, option, parse_flags, parse_float, parse_host_port, parse_int

log = logging.getLogger("tsplit.gateway")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    controlplane: str  # host:port of the control plane (or of a load balancer before its replicas)
    auth: AuthSettings
    listen: str = DEFAULT_LISTEN
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeouts: CallTimeouts = CallTimeouts()

    def __post_init__(self) -> None:
        parse_host_port(self.listen)
        parse_host_port(self.controlplane)
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.timeouts.connect_s <= 0 or self.timeouts.mutation_s <= 0:
            raise ValueError("timeouts must be positive")


def _positive_int(text: str) -> int:
    value = parse_int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    value = parse_float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class GatewayFlags:
    listen: str = option(DEFAULT_LISTEN, "host:port to serve HTTP on (:0 picks a free port)", parse=check_host_port)
    controlplane: str = option("", "host:port of the gRPC control plane", parse=check_host_port, shared=True)
    max_body_bytes: int = option(DEFAULT_MAX_BODY_BYTES, "larger bodies answer 413", parse=_positive_int)
    controlplane_timeout: float = option(CallTimeouts.connect_s, "seconds to wait for the control plane before "
                                         "503 unavailable", parse=_seconds)
    jwt_public_key: str = option("", "PEM public key that verifies tokens", shared=True)
    jwks: str = option("", "JWKS file that verifies tokens", shared=True)
    jwt_issuer: str = option("", "required iss", shared=True)
    jwt_audience: str = option("", "required aud", shared=True)

    def __post_init__(self) -> None:
        if not self.controlplane:
            raise ValueError("--controlplane (or TSPLIT_CONTROLPLANE) is required")
        if bool(self.jwt_public_key) == bool(self.jwks):
            raise ValueError("give exactly one of --jwt-public-key (PEM file) or --jwks (JWKS file): "
                             "the gateway verifies every token")


def settings_from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Flags, then TSPLIT_* variables, then defaults (tsplit.settings); a bad one exits 2
    with a message naming it."""
    try:
        flags = parse_flags(GatewayFlags, "gateway", argv, os.environ if env is None else env,
                            prog="tsplit-gateway", description="REST gateway of the tsplit control plane")
    except SettingsError as err:
        print(f"tsplit-gateway: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    auth = AuthSettings(public_key_path=flags.jwt_public_key or None, jwks_path=flags.jwks or None,
                        issuer=flags.jwt_issuer or None, audience=flags.jwt_audience or None)
    return GatewaySettings(controlplane=flags.controlplane, auth=auth, listen=flags.listen,
                           max_body_bytes=flags.max_body_bytes,
                           timeouts=CallTimeouts(connect_s=flags.controlplane_timeout))


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
    host, port = parse_host_port(listen)
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
