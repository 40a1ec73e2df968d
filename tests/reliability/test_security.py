"""Security through the real gateway and control plane: org isolation on every route of the
gateway's one route table (another org's deployment or model answers exactly as a missing
one, is never listed, never usable as a champion or challenger, and an Idempotency-Key never
replays across orgs); no internal detail in any error body or gRPC status; and the JWT
attacks that tests/gateway and tests/controlplane do not already run end to end: a tampered
payload (org escalation) and JWKS key-id tricks, through the gateway and the gRPC API."""

from __future__ import annotations

import base64
import json

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from controlplane.auth import AuthSettings
from controlplane.gateway.routes import OPERATIONS
from tsplit import devkeys
from tsplit.errors import ERROR_METADATA_KEY
from tsplit.v1 import controlplane_pb2 as cp_pb
from tsplit.v1 import controlplane_pb2_grpc as cp_grpc

MISSING_SLUG, MISSING_MODEL = "dep_nosuchdep", "mod_nosuchmd"


@pytest.fixture
async def two_orgs(etcd_endpoint, system_factory, rel):
    """A control plane and gateway; org_1 with a deployment (one challenger) and a deleted
    one; clients of org_1 and org_2 (admins both)."""
    system = system_factory([etcd_endpoint])
    controlplane = await system.controlplane()
    gateway = await system.gateway(controlplane.address)
    owner = system_factory.rest(gateway.url, org_id="org_1")
    intruder = system_factory.rest(gateway.url, org_id="org_2")
    seeded = await rel.seed_deployment(owner, "127.0.0.1:9", challengers=1)
    deleted = (await owner.create(seeded.champion))["deployment_id"]
    assert (await owner.http.delete(f"/v1/deployments/{deleted}", headers=owner.headers())).status_code == 200
    return system, controlplane, owner, intruder, seeded, deleted


def _body_for(operation, champion: str) -> dict | None:
    return {
        "manage_traffic": {"action": "toggle_shadow", "shadow_mode": True},
        "apply_traffic": {"champion": champion, "shadow_mode": True, "challengers": []},
        "rollback_deployment": {"to_version": 1},
        "create_deployment": {"champion_model_id": champion},
        "register_model": {"endpoint": "127.0.0.1:9", "model_name": "mine"},
    }.get(operation.name)


def _same_answer(theirs, missing, their_id: str, missing_id: str) -> None:
    """Another org's resource answers exactly as a missing one: status, code and message."""
    assert (theirs.status_code, theirs.json()["error"]) == (missing.status_code, missing.json()["error"]), theirs.text
    assert theirs.json()["message"].replace(their_id, "ID") == missing.json()["message"].replace(missing_id, "ID")


async def test_another_orgs_resources_answer_as_missing_on_every_route(two_orgs, rel):
    _, _, owner, intruder, seeded, deleted = two_orgs
    before = await owner.history(seeded.slug)
    covered = set()
    for op in OPERATIONS:
        if op.public:
            covered.add(op.name)
            continue
        body = _body_for(op, seeded.champion)

        async def call(slug: str, model_id: str, op=op, body=body):
            path = op.path.replace("{slug}", slug).replace("{model_id}", model_id)
            return await intruder.http.request(op.method, path, headers=intruder.headers(),
                                               **({"json": body} if body is not None else {}))

        if op.name == "apply_traffic":
            # PUT on a slug that never existed creates it (SPEC 4), so no missing slug answers alike:
            # another org's live deployment is not found, and a deleted slug is never reused (409).
            for theirs, expected in ((seeded.slug, (404, "deployment_not_found")), (deleted, (409, "already_exists"))):
                answer = await call(theirs, "")
                assert (answer.status_code, answer.json()["error"]) == expected, answer.text
            covered.add(op.name)
        elif "{slug}" in op.path:
            for theirs in (seeded.slug, deleted):
                _same_answer(await call(theirs, ""), await call(MISSING_SLUG, ""), theirs, MISSING_SLUG)
            covered.add(op.name)
        elif "{model_id}" in op.path:
            _same_answer(await call("", seeded.champion), await call("", MISSING_MODEL), seeded.champion, MISSING_MODEL)
            covered.add(op.name)
        elif op.method == "GET":  # lists: the intruder's own only
            listed = json.dumps((await call("", "")).json())
            assert seeded.slug not in listed and seeded.champion not in listed and deleted not in listed
            covered.add(op.name)
        elif op.name == "create_deployment":  # another org's model is no champion
            theirs = await call("", "")
            missing = await intruder.http.post("/v1/deployments", json={"champion_model_id": MISSING_MODEL},
                                               headers=intruder.headers())
            assert theirs.status_code == 422
            _same_answer(theirs, missing, seeded.champion, MISSING_MODEL)
            covered.add(op.name)
        elif op.name == "register_model":  # creations are per org: the same key does not replay
            key = {"Idempotency-Key": "shared-key-1"}
            first = await owner.http.post("/v1/models", json={"endpoint": "127.0.0.1:9", "model_name": "a"},
                                          headers={**owner.headers(), **key})
            second = await intruder.http.post("/v1/models", json={"endpoint": "127.0.0.1:9", "model_name": "a"},
                                              headers={**intruder.headers(), **key})
            assert first.status_code == second.status_code == 201, second.text
            assert first.json()["model_id"] != second.json()["model_id"]
            assert second.json()["model_id"] not in json.dumps(await owner.get("/v1/models"))
            covered.add(op.name)
    assert covered == {op.name for op in OPERATIONS}, f"routes not checked: {set(op.name for op in OPERATIONS) - covered}"

    # The intruder's own deployment cannot take the owner's model as a challenger either.
    own_model = (await intruder.register("own", "127.0.0.1:9"))["model_id"]
    own = (await intruder.create(own_model))["deployment_id"]
    for model_id in (seeded.champion, MISSING_MODEL):
        r = await intruder.patch(own, {"action": "add_challenger", "model_id": model_id, "traffic_pct": 5})
        assert r.status_code == 422 and r.json()["error"] == "invalid_traffic_config", r.text
    theirs = await intruder.http.put(f"/v1/deployments/{own}/traffic", headers=intruder.headers(), json={
        "champion": own_model, "challengers": [{"model_id": seeded.champion, "traffic_pct": 5}]})
    assert theirs.status_code == 422, theirs.text
    assert await owner.history(seeded.slug) == before, "the intruder changed nothing"


async def test_error_answers_show_no_internal_detail(two_orgs, inference, rel, dev_auth):
    system, controlplane, owner, _, seeded, _ = two_orgs
    headers = owner.headers()
    slug = seeded.slug
    requests = [
        ("GET", "/v1/nowhere", {}, None),
        ("DELETE", "/v1/models", {}, None),
        ("GET", "/v1/deployments/" + "x" * 5000, {}, None),
        ("GET", "/v1/deployments/dep_%00%ff", {}, None),
        ("GET", "/v1/models/mod_" + "é" * 40, {}, None),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "text/plain"}, b"{}"),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "application/json"}, b"\xff\xfe{"),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "application/json"}, b"[" * 10_000),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "application/json"},
         b'{"action": "add_challenger", "model_id": {"$ne": 1}, "traffic_pct": 1e999}'),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "application/json", "If-Match": "W/\"x\""},
         b'{"action": "toggle_shadow", "shadow_mode": true}'),
        ("PATCH", f"/v1/deployments/{slug}/traffic", {"content-type": "application/json", "Idempotency-Key": "k" * 300},
         b'{"action": "toggle_shadow", "shadow_mode": true}'),
        ("POST", f"/v1/deployments/{slug}/rollback", {"content-type": "application/json"}, b'{"to_version": 99}'),
        ("POST", "/v1/models", {"content-type": "application/json"}, b'{"endpoint": "../../etc/passwd:1", "model_name": "x"}'),
    ]
    for method, path, extra, content in requests:
        r = await owner.http.request(method, path, headers={**headers, **extra}, content=content)
        assert r.status_code >= 400 and set(r.json()) == {"error", "message"}, (path, r.text)
        assert r.status_code < 500, (path, r.text)
        rel.assert_no_internal_detail(r.text)
    for authorization in ("Bearer " + "A" * 20_000, "Bearer a.b.c", "Bearer ..", "Basic Og==", "Bearer \x01"):
        r = await owner.http.get("/v1/models", headers={"authorization": authorization})
        assert r.status_code == 401
        rel.assert_no_internal_detail(r.text)

    async with grpc.aio.insecure_channel(controlplane.address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        good = (("authorization", f"Bearer {dev_auth.token()}"),)
        calls = [
            stub.GetDeployment(cp_pb.GetDeploymentRequest(deployment_id="dep_" + "x" * 500), metadata=good),
            stub.ListModels(cp_pb.ListModelsRequest(), metadata=(("authorization", "Bearer x.y.z"),)),
            stub.ListModels(cp_pb.ListModelsRequest()),
            stub.ManageTraffic(cp_pb.ManageTrafficRequest(deployment_id=slug), metadata=good),
            stub.RollbackDeployment(cp_pb.RollbackDeploymentRequest(deployment_id=slug), metadata=good),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() != grpc.StatusCode.INTERNAL and dict(err.value.trailing_metadata())[ERROR_METADATA_KEY]
            rel.assert_no_internal_detail(err.value.details())


    router = await system.router()
    unready = await system.router(etcd="127.0.0.1:1", wait_ready=False)  # no etcd: no config yet
    raw_infer = inference.channel(router.address).unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for address, raw in [(router.address, rel.infer_request(MISSING_SLUG).SerializeToString()),
                         (router.address, b"\x0a\xff\xff\xff\xff\x0f"), (router.address, b""),
                         (unready.address, rel.infer_request(slug).SerializeToString())]:
        channel_call = raw_infer if address == router.address else \
            inference.channel(address).unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel_call(raw, timeout=5, wait_for_ready=True)
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                    grpc.StatusCode.UNAVAILABLE), err.value
        rel.assert_no_internal_detail(err.value.details())

    await system.stop(controlplane)  # the gateway answers 503 without the control plane's words
    for r in (await owner.http.get("/v1/models", headers=headers),
              await owner.patch(slug, {"action": "toggle_shadow", "shadow_mode": True})):
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        rel.assert_no_internal_detail(r.text)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(public_pem: bytes, kid: str, alg: str) -> dict:
    key = serialization.load_pem_public_key(public_pem)
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


async def test_jwt_attacks_end_to_end_through_a_jwks(etcd_endpoint, system_factory, tmp_path, rel):
    rsa_private, rsa_public = devkeys.generate_key_pair("RS256")
    ec_private, ec_public = devkeys.generate_key_pair("ES256")
    stranger_private, _ = devkeys.generate_key_pair("RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(rsa_public, "k-rsa", "RS256"), _jwk(ec_public, "k-ec", "ES256")]}))
    system = system_factory([etcd_endpoint], auth=AuthSettings(
        jwks_path=str(jwks), issuer=devkeys.DEV_ISSUER, audience=devkeys.DEV_AUDIENCE))
    controlplane = await system.controlplane()
    gateway = await system.gateway(controlplane.address)

    def token(private: bytes = rsa_private, kid: str | None = "k-rsa", algorithm: str = "RS256", **claims) -> str:
        claims = {"sub": "user-1", "org_id": "org_1", **claims}
        return devkeys.mint_token(private, kid=kid, algorithm=algorithm, **claims)

    owner = system_factory.rest(gateway.url)
    owner.headers = lambda **_: {"authorization": f"Bearer {token()}"}
    seeded = await rel.seed_deployment(owner, "127.0.0.1:9", challengers=1)

    header, _, signature = token(org_id="org_2", sub="intruder").split(".")
    escalated = json.loads(base64.urlsafe_b64decode(token().split(".")[1] + "=="))
    attacks = {
        "org_2 token with its payload swapped for org_1": f"{header}.{_b64(json.dumps(escalated).encode())}.{signature}",
        "kid not in the JWKS": token(stranger_private, kid="k-unknown"),
        "no kid while the JWKS has several keys": token(kid=None),
        "RSA token naming the EC key's kid": token(kid="k-ec"),
        "EC token naming the RSA key's kid": token(ec_private, kid="k-rsa", algorithm="ES256"),
        "a stranger's key under a trusted kid": token(stranger_private, kid="k-rsa"),
        "alg none under a trusted kid": f"{_b64(json.dumps({'alg': 'none', 'kid': 'k-rsa'}).encode())}."
                                        f"{_b64(json.dumps(escalated).encode())}.",
        "expired, under a trusted kid": token(ttl_s=-300),
    }
    async with grpc.aio.insecure_channel(controlplane.address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        for name, bad in attacks.items():
            auth = {"authorization": f"Bearer {bad}"}
            for r in (await owner.http.get(f"/v1/deployments/{seeded.slug}", headers=auth),
                      await owner.http.patch(f"/v1/deployments/{seeded.slug}/traffic", headers=auth,
                                             json={"action": "toggle_shadow", "shadow_mode": True})):
                assert r.status_code == 401 and r.json()["error"] == "unauthorized", (name, r.text)
                assert bad not in r.text and len(r.json()["message"]) < 120
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetDeployment(cp_pb.GetDeploymentRequest(deployment_id=seeded.slug),
                                         metadata=(("authorization", f"Bearer {bad}"),), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert dict(err.value.trailing_metadata())[ERROR_METADATA_KEY] == "unauthorized"
        # Positive controls: both keys of the JWKS work, and a token only in the query string does not.
        for good in (token(), token(ec_private, kid="k-ec", algorithm="ES256")):
            r = await owner.http.get(f"/v1/deployments/{seeded.slug}", headers={"authorization": f"Bearer {good}"})
            assert r.status_code == 200, r.text
        r = await owner.http.get(f"/v1/deployments/{seeded.slug}", params={"access_token": token()})
        assert r.status_code == 401
    assert len(await owner.history(seeded.slug)) == seeded.version, "no attack changed anything"
