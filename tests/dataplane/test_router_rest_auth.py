"""`tsplit-router --auth jwt` as the router really starts (dataplane.server's
start_router with RouterSettings, etcd, the session's dev keys): tokens are checked on gRPC
and REST alike (SPEC section 5, "Auth"), another org's deployment reads as a missing one, and
a known token is served from the verifier's cache; REST and gRPC shadow traffic read
together in the deployment's status.""" 

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from tsplit.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tsplit.resources import Deployment, dumps

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [[0.3, 0.7]]}]}


@pytest.fixture
async def jwt_router(router_factory, backends, etcd, layout, dev_auth):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_mine", "mod_a")
    other = Deployment("dep_theirs", "org_2", "mod_a", ())
    await etcd.put(layout.deployment("dep_theirs"), dumps(other.to_json()))
    return await router_factory(auth="jwt", jwt_public_key=str(dev_auth.public_path),
                                jwt_issuer=dev_auth.issuer, jwt_audience=dev_auth.audience)


async def grpc_outcome(client, dp, slug: str, token: str | None) -> tuple[str, str]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        _, md = await client.infer(dp.infer_request(slug), metadata=metadata)
        return "OK", md["tsplit-variant"]
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details()


async def test_grpc_calls_need_a_token_of_the_deployments_org(jwt_router, client_factory, dp, dev_auth):
    client = client_factory(jwt_router.address)
    code, details = await grpc_outcome(client, dp, "dep_mine", None)
    assert code == "UNAUTHENTICATED", details
    code, _ = await grpc_outcome(client, dp, "dep_mine", "not.a.token")
    assert code == "UNAUTHENTICATED"
    expired = dev_auth.token(ttl_s=-3600)
    code, details = await grpc_outcome(client, dp, "dep_mine", expired)
    assert code == "UNAUTHENTICATED" and "expired" in details
    assert await grpc_outcome(client, dp, "dep_mine", dev_auth.token()) == ("OK", "champion")
    # Another org's token: the deployment reads exactly like one that does not exist.
    theirs = await grpc_outcome(client, dp, "dep_theirs", dev_auth.token())
    missing = await grpc_outcome(client, dp, "dep_nope", dev_auth.token())
    assert theirs[0] == missing[0] == "NOT_FOUND"
    assert theirs[1] == missing[1].replace("dep_nope", "dep_theirs")
    assert await grpc_outcome(client, dp, "dep_theirs", dev_auth.token(org_id="org_2")) == ("OK", "champion")


async def test_rest_calls_need_a_token_of_the_deployments_org(jwt_router, dev_auth):
    async with httpx.AsyncClient(base_url=f"http://{jwt_router.address}", timeout=10) as http:
        assert (await http.get("/v2/health/ready")).status_code == 200  # no token needed
        refused = await http.post("/v2/models/dep_mine/infer", json=ROW)
        assert refused.status_code == 401 and set(refused.json()) == {"error"}
        assert refused.headers["www-authenticate"] == "Bearer"
        good = {"authorization": f"Bearer {dev_auth.token()}"}
        answer = await http.post("/v2/models/dep_mine/infer", json=ROW, headers=good)
        assert answer.status_code == 200, answer.text
        assert answer.headers["tsplit-variant"] == "champion"
        theirs = await http.post("/v2/models/dep_theirs/infer", json=ROW, headers=good)
        missing = await http.post("/v2/models/dep_nope/infer", json=ROW, headers=good)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"] == missing.json()["error"].replace("dep_nope", "dep_theirs")
        assert "tsplit-variant" not in theirs.headers


async def test_a_known_token_is_served_from_the_cache(jwt_router, client_factory, dp, dev_auth):
    core = jwt_router.stats._router  # the native core under RunningRouter's stats
    assert core.auth_stats() == (0, 0)
    token = dev_auth.token()
    client = client_factory(jwt_router.address)
    async with httpx.AsyncClient(base_url=f"http://{jwt_router.address}", timeout=10) as http:
        for _ in range(5):
            assert (await grpc_outcome(client, dp, "dep_mine", token))[0] == "OK"
            answer = await http.post("/v2/models/dep_mine/infer", json=ROW,
                                     headers={"authorization": f"Bearer {token}"})
            assert answer.status_code == 200
    assert core.auth_stats() == (1, 1), "ten calls with one token: one signature check"
    await asyncio.gather(*(grpc_outcome(client, dp, "dep_mine", dev_auth.token(sub=f"u{i}")) for i in range(3)))
    assert core.auth_stats() == (4, 4)


async def test_rest_and_grpc_shadow_traffic_reach_the_status_together(router_factory, backends, etcd, layout, dp):
    """A real router (no auth): REST and gRPC calls to a shadow deployment are counted, and
    their copies mirrored and compared, in the same rows of the deployment's status (what
    `tsplit get` and GET .../status show), read from the router records in etcd."""
    from tsplit.router_record import read_records
    from tsplit.status import summarize_deployment_status

    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_b", weights=dp.WEIGHTS_B)
    deployment = await backends.deployment("dep_sh", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    router = await router_factory()
    async with httpx.AsyncClient(base_url=f"http://{router.address}", timeout=10) as http:
        for _ in range(5):
            answer = await http.post("/v2/models/dep_sh/infer", json=ROW)
            assert answer.status_code == 200 and answer.headers["tsplit-variant"] == "champion"
    channel = grpc.aio.insecure_channel(router.address)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(5):
            await stub.ModelInfer(dp.infer_request("dep_sh"), timeout=5)
    finally:
        await channel.close()

    async def rows() -> dict:
        status = summarize_deployment_status(deployment, await read_records(etcd, layout))
        return {row["variant"]: row for row in status["variants"]}

    deadline = asyncio.get_running_loop().time() + 10
    while (await rows())["ch_b"]["compared"] < 10 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    got = await rows()
    assert (got["champion"]["requests"], got["champion"]["ok"]) == (10, 10)
    assert (got["ch_b"]["mirrored"], got["ch_b"]["compared"], got["ch_b"]["mirror_errors"]) == (10, 10, 0)
    assert got["ch_b"]["label_agreement"] == 0.0 and got["ch_b"]["exact_match_rate"] == 0.0
