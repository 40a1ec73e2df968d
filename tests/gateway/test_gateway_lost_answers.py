"""Failures the real control plane does not produce on demand: a write whose answer never
comes (503 commit_unknown from the gateway's own deadline), commit_unknown and unexpected
errors passed on from the control plane, and the gateway's own last-resort 500.

A stand-in control plane (a real grpc.aio server on a free port) plays the other side."""

from __future__ import annotations

import asyncio
import logging

import grpc
import httpx
import pytest

from controlplane.gateway.app import build_app
from controlplane.gateway.client import CallTimeouts
from controlplane.gateway.routes import Handlers
from tsplit.errors import ERROR_METADATA_KEY
from tsplit.v1 import controlplane_pb2 as pb, controlplane_pb2_grpc

SLUG = "dep_standin1"


class StandInControlPlane(controlplane_pb2_grpc.ControlPlaneServicer):
    def __init__(self):
        self.writes: list = []

    async def GetDeployment(self, request, context):
        return pb.Deployment(deployment_id=request.deployment_id, org_id="org_1", cache_version=1)

    async def ManageTraffic(self, request, context):
        self.writes.append(request)
        await asyncio.sleep(30)  # the answer is lost: it never comes within the gateway's deadline
        return pb.ManageTrafficResponse()

    async def RegisterModel(self, request, context):
        self.writes.append(request)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "etcd's answer was lost and the outcome is unknown",
                            trailing_metadata=((ERROR_METADATA_KEY, "commit_unknown"),))

    async def CreateDeployment(self, request, context):
        self.writes.append(request)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "etcd is unreachable; nothing was written",
                            trailing_metadata=((ERROR_METADATA_KEY, "unavailable"),))

    async def ListModels(self, request, context):
        raise RuntimeError("secret internal detail")


@pytest.fixture
async def stand_in():
    servicer = StandInControlPlane()
    server = grpc.aio.server()
    controlplane_pb2_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_a_lost_answer_is_commit_unknown_with_the_key_to_retry(stand_in, open_gateway):
    servicer, address = stand_in
    async with open_gateway(address, timeouts=CallTimeouts(connect_s=1.0, mutation_s=0.5)) as gw:
        r = await gw.http.patch(f"/v1/deployments/{SLUG}/traffic", json={"action": "toggle_shadow", "shadow_mode": True},
                                headers={**gw.headers(), "Idempotency-Key": "my-key-1"})
        assert r.status_code == 503 and r.json()["error"] == "commit_unknown", r.text
        assert "Idempotency-Key: my-key-1" in r.json()["message"]
        assert [w.request_id for w in servicer.writes] == ["my-key-1"]

        # Without a key the gateway made one up and names it, so the caller can still retry.
        r = await gw.http.patch(f"/v1/deployments/{SLUG}/traffic", json={"action": "toggle_shadow", "shadow_mode": True},
                                headers=gw.headers())
        assert r.json()["error"] == "commit_unknown"
        assert f"Idempotency-Key: {servicer.writes[-1].request_id}" in r.json()["message"]


async def test_the_control_plane_codes_pass_through(stand_in, open_gateway):
    servicer, address = stand_in
    async with open_gateway(address) as gw:
        r = await gw.http.post("/v1/models", json={"endpoint": "127.0.0.1:1", "model_name": "m"}, headers=gw.headers())
        assert r.status_code == 503 and r.json() == {
            "error": "commit_unknown", "message": "etcd's answer was lost and the outcome is unknown"}
        # A coded UNAVAILABLE stays "unavailable": the control plane knows nothing was written.
        r = await gw.http.post("/v1/deployments", json={"champion_model_id": "mod_a1b2c3d4"}, headers=gw.headers())
        assert r.status_code == 503 and r.json()["error"] == "unavailable"


async def test_an_unexpected_control_plane_failure_is_500_without_details(stand_in, open_gateway):
    _, address = stand_in
    async with open_gateway(address) as gw:
        r = await gw.http.get("/v1/models", headers=gw.headers())
        assert r.status_code == 500 and r.json() == {"error": "internal", "message": "internal error"}


class _BrokenClient:
    async def read(self, *args, **kwargs):
        raise RuntimeError("secret internal detail")

    mutate = read


async def test_a_gateway_bug_is_500_json_with_the_traceback_only_in_the_log(caplog, dev_auth):
    from controlplane.auth import TokenVerifier, bearer_token, require_mutation_role
    from controlplane.auth import AuthSettings
    verifier = TokenVerifier(AuthSettings(public_key_path=str(dev_auth.public_path)))
    app = build_app(Handlers(_BrokenClient(), lambda h: verifier.verify(bearer_token(h)), require_mutation_role, 1024))
    caplog.set_level(logging.ERROR, logger="tsplit.gateway")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        r = await http.get("/v1/models", headers=dev_auth.headers())
    assert r.status_code == 500 and r.json() == {"error": "internal", "message": "internal error"}
    assert r.headers["content-type"] == "application/json"
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text
