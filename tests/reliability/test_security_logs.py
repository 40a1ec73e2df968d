"""No token or secret reaches a log: on a `tsplit up` stack of real processes, tokens go
through every path that logs (accepted, refused as 401/403, over REST, straight to the gRPC
control plane, and as metadata through the routers to the model servers), then every
process's log is searched for each token, each token's signature and each line of the
private key. The same paths run in-process with every logger at DEBUG."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import httpx

from tsplit import devkeys
from tsplit.v1 import controlplane_pb2 as cp_pb
from tsplit.v1 import controlplane_pb2_grpc as cp_grpc


def test_no_token_or_key_in_any_log(up_stack, rel):
    stack = up_stack.stack
    private = Path(stack["jwt"]["private_key"]).read_bytes()
    stranger, _ = devkeys.generate_key_pair()

    def mint(key: bytes = private, **claims) -> str:
        return devkeys.mint_token(key, **{"sub": "log-test", "org_id": "org_1", **claims})

    tokens = {
        "admin": stack["jwt"]["admin_token"], "viewer": mint(role="viewer"), "other org": mint(org_id="org_2"),
        "expired": mint(ttl_s=-600), "forged": mint(stranger), "wrong audience": mint(audience="elsewhere"),
        "inference client's": mint(sub="inference-client"),
    }
    model = stack["demo_models"][0]["model_id"]
    with httpx.Client(base_url=stack["gateway"]["url"], timeout=30) as http:
        admin = {"authorization": f"Bearer {tokens['admin']}"}
        slug = http.post("/v1/deployments", json={"champion_model_id": model}, headers=admin).json()["deployment_id"]
        for name, token in tokens.items():
            auth = {"authorization": f"Bearer {token}"}
            answers = [http.get("/v1/models", headers=auth),
                       http.get(f"/v1/deployments/{slug}", headers=auth),
                       http.get("/v1/deployments/dep_missing", headers=auth),
                       http.patch(f"/v1/deployments/{slug}/traffic", headers=auth,
                                  json={"action": "toggle_shadow", "shadow_mode": name == "admin"}),
                       http.patch(f"/v1/deployments/{slug}/traffic", headers=auth, json={"action": "promote"}),
                       http.post("/v1/models", headers=auth, content=b"{")]
            assert {r.status_code for r in answers} - {200, 400, 401, 403, 404, 415, 422} == set(), name
            for r in answers:
                assert token not in r.text
    with grpc.insecure_channel(stack["controlplane"]["address"]) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        for token in tokens.values():
            try:
                stub.GetDeployment(cp_pb.GetDeploymentRequest(deployment_id=slug),
                                   metadata=(("authorization", f"Bearer {token}"),), timeout=5)
            except grpc.RpcError as err:
                assert token not in (err.details() or "")
    request = rel.infer_request(slug).SerializeToString()
    client_auth = ("authorization", "Bearer " + tokens["inference client's"])  # forwarded to the backend
    for router in stack["routers"]:
        with grpc.insecure_channel(router["address"]) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            for metadata in ((), (("x-tsplit-variant", "ch_nosuch"),)):
                try:
                    infer(request, timeout=10, metadata=(client_auth, *metadata))
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(1.5)  # the routers' records and the processes' buffered output reach the logs

    logs = sorted(up_stack.logs.glob("*.log"))
    names = {p.stem for p in logs}
    assert {"etcd", "controlplane", "gateway", "router-1", "router-2"} <= names, names
    assert sum(p.stat().st_size for p in logs) > 0
    key_lines = [line for line in private.decode().splitlines() if line and not line.startswith("-----")]
    for path in logs:
        text = path.read_text(errors="replace")
        assert "PRIVATE KEY" not in text and not any(line in text for line in key_lines), f"key material in {path.name}"
        for name, token in tokens.items():
            assert token not in text, f"the {name} token is in {path.name}"
            assert token.rsplit(".", 1)[1] not in text, f"the {name} token's signature is in {path.name}"


async def test_no_token_in_any_log_record_at_debug_level(etcd_endpoint, system_factory, inference, rel, dev_auth,
                                                         caplog):
    """The same paths in-process with every logger (ours, grpc, uvicorn, httpx) at DEBUG."""
    caplog.set_level(logging.DEBUG)
    system = system_factory([etcd_endpoint])
    [model_server] = await system.models(["lin"])
    controlplane = await system.controlplane()
    rest = system_factory.rest((await system.gateway(controlplane.address)).url)
    router = await system.router()
    seeded = await rel.seed_deployment(rest, model_server.address, challengers=1)
    tokens = [dev_auth.token(sub="dbg"), dev_auth.token(role="viewer"), dev_auth.token(ttl_s=-600),
              devkeys.mint_token(devkeys.generate_key_pair()[0], sub="x", org_id="org_1")]
    for token in tokens:
        auth = {"authorization": f"Bearer {token}"}
        for r in (await rest.http.get(f"/v1/deployments/{seeded.slug}", headers=auth),
                  await rest.http.patch(f"/v1/deployments/{seeded.slug}/traffic", headers=auth,
                                        json={"action": "update_traffic", "challenger_id": seeded.challengers[0],
                                              "traffic_pct": 2 + tokens.index(token)}),
                  await rest.http.patch(f"/v1/deployments/{seeded.slug}/traffic", headers=auth, json={"bad": 1})):
            assert r.status_code < 500
        for metadata in ((), (("x-tsplit-variant", "ch_nosuch"),)):
            await inference.infer(router.address, seeded.slug, metadata=(("authorization", f"Bearer {token}"), *metadata))
    await asyncio.sleep(1.2)  # a registration write of the router's counters
    records = caplog.records
    assert len(records) > 20, "the loggers were quiet: nothing was checked"
    text = caplog.text + "\n".join(str(r.args) for r in records)
    for token in tokens:
        assert token not in text and token.rsplit(".", 1)[1] not in text, "a token reached a log record"
    assert dev_auth.private_pem.decode().splitlines()[1] not in text
