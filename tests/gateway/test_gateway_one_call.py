"""A well-formed change of a deployment costs the gateway ONE control-plane call (the
control plane checks 404 before 403 and 422 itself); only when the gateway has a verdict of
its own (403, 400, 413, 415, a bad header) does it first ask whether the deployment exists,
so that 404 still comes first. A stand-in control plane counts the calls."""

from __future__ import annotations

import grpc
import pytest

from tsplit.errors import ERROR_METADATA_KEY
from tsplit.v1 import controlplane_pb2 as pb, controlplane_pb2_grpc

KNOWN = "dep_known001"
MISSING = "dep_missing01"


class CountingControlPlane(controlplane_pb2_grpc.ControlPlaneServicer):
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    async def _found_or_abort(self, slug: str, context) -> None:
        if slug != KNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"deployment {slug!r} not found",
                                trailing_metadata=((ERROR_METADATA_KEY, "deployment_not_found"),))

    async def GetDeployment(self, request, context):
        self.calls.append(("GetDeployment", request.deployment_id))
        await self._found_or_abort(request.deployment_id, context)
        return pb.Deployment(deployment_id=KNOWN, org_id="org_1", champion_model_id="mod_a", cache_version=3)

    async def ManageTraffic(self, request, context):
        self.calls.append(("ManageTraffic", request.deployment_id))
        await self._found_or_abort(request.deployment_id, context)
        return pb.ManageTrafficResponse(deployment_id=KNOWN, action="toggle_shadow", shadow_mode=True,
                                        cache_version=4, changed=True)

    async def DeleteDeployment(self, request, context):
        self.calls.append(("DeleteDeployment", request.deployment_id))
        await self._found_or_abort(request.deployment_id, context)
        return pb.DeleteDeploymentResponse(deployment_id=KNOWN)


@pytest.fixture
async def counting():
    servicer = CountingControlPlane()
    server = grpc.aio.server()
    controlplane_pb2_grpc.add_ControlPlaneServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


TOGGLE = {"action": "toggle_shadow", "shadow_mode": True}


async def test_a_well_formed_change_is_one_call(counting, open_gateway):
    servicer, address = counting
    async with open_gateway(address) as gw:
        r = await gw.http.patch(f"/v1/deployments/{KNOWN}/traffic", json=TOGGLE, headers=gw.headers())
        assert r.status_code == 200 and r.json()["cache_version"] == 4
        r = await gw.http.patch(f"/v1/deployments/{MISSING}/traffic", json=TOGGLE, headers=gw.headers())
        assert r.status_code == 404 and r.json()["error"] == "deployment_not_found"
        r = await gw.http.delete(f"/v1/deployments/{KNOWN}", headers=gw.headers())
        assert r.status_code == 200
    assert servicer.calls == [("ManageTraffic", KNOWN), ("ManageTraffic", MISSING), ("DeleteDeployment", KNOWN)]


@pytest.mark.parametrize("slug, expected", [(MISSING, (404, "deployment_not_found")), (KNOWN, None)])
async def test_the_gateways_own_verdicts_come_after_404(counting, open_gateway, slug, expected):
    servicer, address = counting
    path = f"/v1/deployments/{slug}/traffic"
    async with open_gateway(address, max_body_bytes=64) as gw:
        cases = [
            (dict(json=TOGGLE, headers=gw.headers(role="viewer")), (403, "forbidden")),
            (dict(content=b"{not json", headers={**gw.headers(), "content-type": "application/json"}),
             (400, "invalid_json")),
            (dict(content=b"{}" + b" " * 100, headers={**gw.headers(), "content-type": "application/json"}),
             (413, "payload_too_large")),
            (dict(content=b"{}", headers={**gw.headers(), "content-type": "text/plain"}),
             (415, "unsupported_media_type")),
            (dict(json=TOGGLE, headers={**gw.headers(), "If-Match": "v3"}), (422, "invalid_request")),
            (dict(json=TOGGLE, headers={**gw.headers(), "Idempotency-Key": "with space"}), (422, "invalid_request")),
        ]
        for kwargs, own in cases:
            r = await gw.http.patch(path, **kwargs)
            assert (r.status_code, r.json()["error"]) == (expected or own), kwargs
    # Each asked the control plane whether the deployment exists, and nothing more.
    assert servicer.calls == [("GetDeployment", slug)] * len(cases)
