"""tsplit-gateway the process: settings from flags and TSPLIT_* variables, the console
script serving on a free port, and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from controlplane.gateway.client import CallTimeouts
from controlplane.gateway.server import DEFAULT_MAX_BODY_BYTES, GatewaySettings, settings_from_args, start_gateway
from tsplit.v1 import controlplane_pb2 as pb, controlplane_pb2_grpc

SCRIPT = Path(sys.executable).with_name("tsplit-gateway")


def test_flags_give_the_settings(dev_auth):
    settings = settings_from_args(
        ["--listen", ":0", "--controlplane", "127.0.0.1:50050", "--jwt-public-key", str(dev_auth.public_path),
         "--jwt-issuer", "iss-1", "--jwt-audience", "aud-1", "--max-body-bytes", "1000",
         "--controlplane-timeout", "2.5"], env={})
    assert settings.listen == "127.0.0.1:0" and settings.controlplane == "127.0.0.1:50050"
    assert settings.auth.public_key_path == str(dev_auth.public_path) and settings.auth.jwks_path is None
    assert (settings.auth.issuer, settings.auth.audience) == ("iss-1", "aud-1")
    assert settings.max_body_bytes == 1000 and settings.timeouts == CallTimeouts(connect_s=2.5)


def test_variables_give_the_settings_and_flags_win(dev_auth):
    env = {"TSPLIT_GATEWAY_LISTEN": "127.0.0.1:9999", "TSPLIT_CONTROLPLANE": "127.0.0.1:7000",
           "TSPLIT_JWKS": "/keys/jwks.json", "TSPLIT_JWT_ISSUER": "env-iss", "TSPLIT_JWT_AUDIENCE": "env-aud",
           "TSPLIT_GATEWAY_MAX_BODY_BYTES": "2048"}
    settings = settings_from_args([], env=env)
    assert (settings.listen, settings.controlplane, settings.auth.jwks_path) == (
        "127.0.0.1:9999", "127.0.0.1:7000", "/keys/jwks.json")
    assert (settings.auth.issuer, settings.auth.audience, settings.max_body_bytes) == ("env-iss", "env-aud", 2048)
    flags = settings_from_args(["--listen", "127.0.0.1:1234", "--controlplane", "127.0.0.1:1"], env=env)
    assert (flags.listen, flags.controlplane) == ("127.0.0.1:1234", "127.0.0.1:1")
    defaults = settings_from_args(["--controlplane", "127.0.0.1:1", "--jwks", "j.json"], env={})
    assert defaults.listen == "127.0.0.1:8080" and defaults.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 65536
    assert defaults.timeouts.connect_s < 5.0  # the SPEC's 503 within 5 s


@pytest.mark.parametrize("argv, env, named", [
    (["--jwks", "j.json"], {}, "--controlplane"),
    (["--controlplane", "127.0.0.1:1"], {}, "--jwt-public-key"),
    (["--controlplane", "127.0.0.1:1", "--jwks", "j", "--jwt-public-key", "k"], {}, "exactly one"),
    (["--controlplane", "nowhere", "--jwks", "j"], {}, "host:port"),
    (["--controlplane", "127.0.0.1:1", "--jwks", "j", "--listen", "8080"], {}, "host:port"),
    (["--controlplane", "127.0.0.1:1", "--jwks", "j", "--max-body-bytes", "0"], {}, "--max-body-bytes"),
    (["--controlplane", "127.0.0.1:1", "--jwks", "j"], {"TSPLIT_GATEWAY_MAX_BODY_BYTES": "lots"}, "--max-body-bytes"),
])
def test_bad_settings_are_usage_errors_naming_the_flag(argv, env, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        settings_from_args(argv, env=env)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


async def test_listen_port_zero_picks_a_free_port(cp, dev_auth):
    from controlplane.auth import AuthSettings
    settings = GatewaySettings(controlplane=cp.address, listen=":0",
                               auth=AuthSettings(public_key_path=str(dev_auth.public_path)))
    first, second = await start_gateway(settings), await start_gateway(settings)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first.url) and first.url != second.url
        async with httpx.AsyncClient() as http:
            for gateway in (first, second):
                assert (await http.get(f"{gateway.url}/healthz")).status_code == 200
    finally:
        await first.stop()
        await second.stop()


async def _line_matching(stream: asyncio.StreamReader, pattern: str, timeout: float) -> re.Match:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = []
    for _ in range(200):
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - loop.time()))
        seen.append(line.decode(errors="replace"))
        match = re.search(pattern, seen[-1])
        if match:
            return match
        if not line:
            break
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


async def _run_gateway(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def test_the_console_script_serves_and_stops_on_sigterm(cp, dev_auth):
    assert SCRIPT.exists(), "tsplit-gateway is not installed in this venv"
    process = await _run_gateway("--listen", "127.0.0.1:0", "--controlplane", cp.address,
                                 "--jwt-public-key", str(dev_auth.public_path),
                                 "--jwt-issuer", dev_auth.issuer, "--jwt-audience", dev_auth.audience)
    try:
        url = (await _line_matching(process.stderr, r"listening on (http://127\.0\.0\.1:\d+)", 20)).group(1)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            models = await http.get("/v1/models", headers=dev_auth.headers())
            assert models.status_code == 200 and models.json() == {"models": []}
        process.send_signal(signal.SIGTERM)
        await _line_matching(process.stderr, r"tsplit-gateway stopped", 10)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_console_script_exits_1_when_the_port_is_taken(dev_auth):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = await _run_gateway("--listen", f"127.0.0.1:{port}", "--controlplane", "127.0.0.1:1",
                                     "--jwt-public-key", str(dev_auth.public_path))
        try:
            await _line_matching(process.stderr, rf"cannot start: cannot listen on 127\.0\.0\.1:{port}", 20)
            assert await asyncio.wait_for(process.wait(), 10) == 1
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


class _SlowControlPlane(controlplane_pb2_grpc.ControlPlaneServicer):
    async def ListModels(self, request, context):
        await asyncio.sleep(0.5)
        return pb.ListModelsResponse(models=[pb.Model(model_id="mod_slow0001", endpoint="127.0.0.1:1", model_name="m")])


async def test_stop_lets_an_in_flight_request_finish(dev_auth):
    server = grpc.aio.server()
    controlplane_pb2_grpc.add_ControlPlaneServicer_to_server(_SlowControlPlane(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    from controlplane.auth import AuthSettings
    gateway = await start_gateway(GatewaySettings(controlplane=f"127.0.0.1:{port}", listen="127.0.0.1:0",
                                                  auth=AuthSettings(public_key_path=str(dev_auth.public_path))))
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            in_flight = asyncio.create_task(http.get("/v1/models", headers=dev_auth.headers()))
            await asyncio.sleep(0.2)  # the request has reached the slow control plane
            await gateway.stop()
            r = await in_flight
            assert r.status_code == 200 and r.json()["models"][0]["model_id"] == "mod_slow0001"
            with pytest.raises(httpx.ConnectError):
                await http.get("/healthz")
    finally:
        await server.stop(0)


async def test_answers_are_not_held_back_by_nagle(gateway):
    """Without TCP_NODELAY on accepted sockets, every keep-alive answer waited ~40 ms for a
    delayed ACK; the median of sequential requests shows it even on a busy machine."""
    import statistics
    import time
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        await http.get("/healthz")
        times = []
        for _ in range(21):
            started = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.030, f"median {statistics.median(times) * 1000:.1f} ms"
