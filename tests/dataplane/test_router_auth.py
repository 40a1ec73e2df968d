"""`tsplit-router --server native --auth jwt` as the router really starts (dataplane.server's
start_router with RouterSettings, etcd, the session's dev keys): tokens are checked on gRPC
and REST alike (SPEC section 5, "Auth"), another org's deployment reads as a missing one, and
a known token is served from the verifier's cache."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from tsplit.resources import Deployment, dumps

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [[0.3, 0.7]]}]}


@pytest.fixture
async def jwt_router(router_factory, backends, etcd, layout, dev_auth):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_mine", "mod_a")
    other = Deployment("dep_theirs", "org_2", "mod_a", ())
    await etcd.put(layout.deployment("dep_theirs"), dumps(other.to_json()))
    return await router_factory(server="native", auth="jwt", jwt_public_key=str(dev_auth.public_path),
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
