"""Every row of SPEC section 4's error table through the real gateway and control plane, with
exact status and code, and the order of the checks: token, org, role, body."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest

from controlplane.gateway.client import CallTimeouts
from tsplit import devkeys


def assert_error(r, status: int, code: str, *in_message: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"} and body["error"] == code, body
    assert body["message"] and "Traceback" not in body["message"]
    for text in in_message:
        assert text in body["message"], body
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(dev_auth, **over) -> dict:
    now = int(time.time())
    return {"sub": "user-1", "org_id": "org_1", "role": "admin", "iat": now, "exp": now + 600,
            "iss": dev_auth.issuer, "aud": dev_auth.audience, **over}


def _unsigned(dev_auth) -> str:
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(_claims(dev_auth)).encode())}."


def _hs256_with_public_key(dev_auth) -> str:
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}." \
                    f"{_b64(json.dumps(_claims(dev_auth)).encode())}"
    mac = hmac.new(dev_auth.public_path.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def bad_authorizations(dev_auth) -> dict[str, str | None]:
    other_private, _ = devkeys.generate_key_pair()
    return {
        "missing": None,
        "not bearer": "Basic dXNlcjpwYXNzd29yZA==",
        "malformed": "Bearer not.a.jwt",
        "empty bearer": "Bearer",
        "expired": f"Bearer {dev_auth.token(ttl_s=-120)}",
        "not yet valid": f"Bearer {dev_auth.token(extra={'nbf': int(time.time()) + 600})}",
        "bad signature": f"Bearer {devkeys.mint_token(other_private, sub='user-1', org_id='org_1')}",
        "alg none": f"Bearer {_unsigned(dev_auth)}",
        "HS256 keyed with the public key": f"Bearer {_hs256_with_public_key(dev_auth)}",
        "algorithm not pinned": f"Bearer {devkeys.mint_token(dev_auth.private_pem, sub='u', org_id='org_1', algorithm='RS512')}",
        "wrong issuer": f"Bearer {dev_auth.token(issuer='someone-else')}",
        "wrong audience": f"Bearer {dev_auth.token(audience='another-api')}",
        "no audience": f"Bearer {dev_auth.token(audience=None)}",
    }


async def test_401_for_every_kind_of_bad_token(gateway, dev_auth):
    slug, _, challenger = await gateway.deploy()
    body = {"action": "add_challenger", "model_id": challenger, "traffic_pct": 10}
    for name, authorization in bad_authorizations(dev_auth).items():
        headers = {} if authorization is None else {"authorization": authorization}
        r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", json=body, headers=headers)
        assert_error(r, 401, "unauthorized")
        r = await gateway.http.get("/v1/models", headers=headers)
        assert_error(r, 401, "unauthorized")
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert len(history["versions"]) == 1  # none of them changed anything


async def test_403_for_a_viewer_on_every_mutation(gateway):
    slug, champion, challenger = await gateway.deploy()
    viewer = gateway.headers(role="viewer")
    calls = [
        gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=viewer,
                           json={"action": "add_challenger", "model_id": challenger, "traffic_pct": 10}),
        gateway.http.put(f"/v1/deployments/{slug}/traffic", headers=viewer,
                         json={"champion": champion, "shadow_mode": True, "challengers": []}),
        gateway.http.post(f"/v1/deployments/{slug}/rollback", headers=viewer, json={"to_version": 1}),
        gateway.http.delete(f"/v1/deployments/{slug}", headers=viewer),
        gateway.http.post("/v1/models", headers=viewer, json={"endpoint": "127.0.0.1:1", "model_name": "x"}),
        gateway.http.post("/v1/deployments", headers=viewer, json={"champion_model_id": champion}),
    ]
    for call in calls:
        assert_error(await call, 403, "forbidden", "owner or admin")
    roles = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=gateway.headers(role=None, roles=["owner"]),
                                     json={"action": "toggle_shadow", "shadow_mode": True})
    assert roles.status_code == 200  # a "roles" list with owner may


async def test_404_for_a_missing_deployment_and_for_another_orgs(gateway):
    slug, champion, _ = await gateway.deploy()
    missing = "dep_doesnotexist"
    for path in (f"/v1/deployments/{missing}", f"/v1/deployments/{missing}/history",
                 f"/v1/deployments/{missing}/status"):
        assert_error(await gateway.http.get(path, headers=gateway.headers()), 404, "deployment_not_found")
    assert_error(await gateway.http.delete(f"/v1/deployments/{missing}", headers=gateway.headers()),
                 404, "deployment_not_found")

    # Another org sees the same answer as for a slug that does not exist, for reads and changes.
    other = gateway.headers(org_id="org_2")
    for r in [await gateway.http.get(f"/v1/deployments/{slug}", headers=other),
              await gateway.http.get(f"/v1/deployments/{slug}/history", headers=other),
              await gateway.http.get(f"/v1/deployments/{slug}/status", headers=other),
              await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=other,
                                       json={"action": "toggle_shadow", "shadow_mode": True}),
              await gateway.http.put(f"/v1/deployments/{slug}/traffic", headers=other,
                                     json={"champion": champion, "shadow_mode": True, "challengers": []}),
              await gateway.http.post(f"/v1/deployments/{slug}/rollback", headers=other, json={"to_version": 1}),
              await gateway.http.delete(f"/v1/deployments/{slug}", headers=other)]:
        body = assert_error(r, 404, "deployment_not_found")
        assert body == assert_error(await gateway.http.get(f"/v1/deployments/{missing}", headers=other),
                                    404, "deployment_not_found") | {"message": body["message"]}
    listed = (await gateway.http.get("/v1/deployments", headers=other)).json()
    assert listed == {"deployments": []}


async def test_404_model_not_found_missing_or_another_orgs(gateway):
    _, champion, _ = await gateway.deploy()
    assert_error(await gateway.http.get("/v1/models/mod_nothere", headers=gateway.headers()), 404, "model_not_found")
    assert_error(await gateway.http.get(f"/v1/models/{champion}", headers=gateway.headers(org_id="org_2")),
                 404, "model_not_found")


async def test_409_already_exists_for_deployments_and_models(gateway):
    slug, champion, _ = await gateway.deploy()
    again = await gateway.http.post("/v1/deployments", headers=gateway.headers(),
                                    json={"champion_model_id": champion, "deployment_id": slug})
    assert_error(again, 409, "already_exists", slug)
    model = await gateway.http.post("/v1/models", headers=gateway.headers(),
                                    json={"endpoint": "127.0.0.1:1", "model_name": "x", "model_id": champion})
    assert_error(model, 409, "already_exists")
    # A deleted slug is never reused.
    assert (await gateway.http.delete(f"/v1/deployments/{slug}", headers=gateway.headers())).status_code == 200
    reused = await gateway.http.post("/v1/deployments", headers=gateway.headers(),
                                     json={"champion_model_id": champion, "deployment_id": slug})
    assert_error(reused, 409, "already_exists")


async def test_409_version_conflict_with_if_match_changes_nothing(gateway):
    slug, champion, challenger = await gateway.deploy()
    stale = {**gateway.headers(), "If-Match": "7"}
    r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=stale,
                                 json={"action": "add_challenger", "model_id": challenger, "traffic_pct": 10})
    assert_error(r, 409, "version_conflict")
    for r in [await gateway.http.put(f"/v1/deployments/{slug}/traffic", headers=stale,
                                     json={"champion": champion, "shadow_mode": True, "challengers": []}),
              await gateway.http.post(f"/v1/deployments/{slug}/rollback", headers=stale, json={"to_version": 1}),
              await gateway.http.delete(f"/v1/deployments/{slug}", headers={**stale, "If-Match": '"2"'})]:
        assert_error(r, 409, "version_conflict")
    current = (await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())).json()
    assert current["cache_version"] == 1 and current["challengers"] == []


async def test_413_over_the_body_limit(gateway):
    slug, _, _ = await gateway.deploy()
    limit = 64 * 1024
    body = b'{"action": "toggle_shadow", "shadow_mode": true}'
    exact = body[:-1] + b" " * (limit - len(body)) + b"}"
    assert len(exact) == limit
    ok = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", content=exact,
                                  headers={**gateway.headers(), "content-type": "application/json"})
    assert ok.status_code == 200, ok.text  # exactly the limit is allowed
    over = exact[:-1] + b" }"
    r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", content=over,
                                 headers={**gateway.headers(), "content-type": "application/json"})
    assert_error(r, 413, "payload_too_large", "65536")

    async def chunked():  # no Content-Length: the limit holds while streaming
        for _ in range(4):
            yield b" " * (limit // 2)
    r = await gateway.http.post("/v1/models", content=chunked(),
                                headers={**gateway.headers(), "content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


async def test_415_unless_the_body_is_application_json(gateway):
    slug, _, _ = await gateway.deploy()
    body = b'{"action": "toggle_shadow", "shadow_mode": true}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"):
        r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", content=body,
                                     headers={**gateway.headers(), "content-type": content_type})
        assert_error(r, 415, "unsupported_media_type", "application/json")
    r = await gateway.http.post("/v1/models", content=body, headers=gateway.headers())  # no Content-Type
    assert_error(r, 415, "unsupported_media_type")


async def test_400_invalid_json(gateway):
    slug, _, _ = await gateway.deploy()
    cases = [(b"[1, 2]", "an array"), (b'"add_challenger"', "a string"), (b'{"action": ', "not valid JSON"),
             (b"", "not valid JSON"), (b"null", "null"), (b"\xff{}", "UTF-8")]
    for body, shown in cases:
        r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", content=body,
                                     headers={**gateway.headers(), "content-type": "application/json"})
        assert_error(r, 400, "invalid_json", shown)
    r = await gateway.http.post("/v1/models", content=b"[]", headers={**gateway.headers(), "content-type": "application/json"})
    assert_error(r, 400, "invalid_json", "an array")


async def test_422_invalid_traffic_config_names_the_field(gateway):
    slug, champion, challenger = await gateway.deploy()
    cases = [
        ({"action": "add_challenger", "model_id": challenger, "traffic_pct": 60}, "traffic_pct"),
        ({"action": "add_challenger", "model_id": challenger, "traffic_pct": "10"}, "traffic_pct"),
        ({"action": "add_challenger", "model_id": challenger, "traffic_pct": True}, "traffic_pct"),
        ({"action": "add_challenger", "model_id": challenger, "trafic_pct": 10}, "trafic_pct"),
        ({"action": "add_challenger", "model_id": champion, "traffic_pct": 10}, "model_id"),
        ({"action": "remove_challenger", "challenger_id": "ch_nothere"}, "challenger_id"),
        ({"action": "promote"}, "action"),
    ]
    for body, field in cases:
        r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", json=body, headers=gateway.headers())
        assert_error(r, 422, "invalid_traffic_config", field)
    current = (await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())).json()
    assert current["cache_version"] == 1


async def test_422_for_a_nan_traffic_pct_passed_through_to_the_control_plane(gateway):
    slug, _, challenger = await gateway.deploy()
    raw = b'{"action": "add_challenger", "model_id": "%s", "traffic_pct": NaN}' % challenger.encode()
    r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", content=raw,
                                 headers={**gateway.headers(), "content-type": "application/json"})
    assert_error(r, 422, "invalid_traffic_config", "traffic_pct")


async def test_422_invalid_request_on_the_other_routes(gateway):
    slug, _, _ = await gateway.deploy()
    cases = [
        ("POST", "/v1/models", {"endpoint": "not an endpoint", "model_name": "m"}, "endpoint"),
        ("POST", "/v1/models", {"endpoint": "127.0.0.1:1"}, "model_name"),
        ("POST", "/v1/deployments", {"champion_model_id": "mod_unknown1"}, "champion_model_id"),
        ("POST", f"/v1/deployments/{slug}/rollback", {"to_version": "one"}, "to_version"),
    ]
    for method, path, body, field in cases:
        r = await gateway.http.request(method, path, json=body, headers=gateway.headers())
        assert_error(r, 422, "invalid_request", field)
    r = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", json={"action": "toggle_shadow", "shadow_mode": True},
                                 headers={**gateway.headers(), "If-Match": "version four"})
    assert_error(r, 422, "invalid_request", "If-Match")
    r = await gateway.http.post("/v1/models", json={"endpoint": "127.0.0.1:1", "model_name": "m"},
                                headers={**gateway.headers(), "Idempotency-Key": "x" * 200})
    assert_error(r, 422, "invalid_request", "Idempotency-Key")


async def test_checks_run_in_order_token_org_role_body(gateway, dev_auth):
    slug, _, _ = await gateway.deploy()
    garbage = {"content": b"<html>", "headers": {"content-type": "text/html"}}
    path = f"/v1/deployments/{slug}/traffic"
    # No token beats everything else.
    r = await gateway.http.patch(path, **garbage)
    assert_error(r, 401, "unauthorized")
    # Another org's viewer with a bad body: 404, not 403 or 415 (existence not revealed).
    r = await gateway.http.patch(path, content=b"<html>",
                                 headers={"content-type": "text/html", **gateway.headers(org_id="org_2", role="viewer")})
    assert_error(r, 404, "deployment_not_found")
    r = await gateway.http.patch("/v1/deployments/dep_nothere/traffic", content=b"<html>",
                                 headers={"content-type": "text/html", **gateway.headers(role="viewer")})
    assert_error(r, 404, "deployment_not_found")
    # The org's viewer with a bad body: 403 before the body is looked at.
    r = await gateway.http.patch(path, content=b"x" * 70000,
                                 headers={"content-type": "text/html", **gateway.headers(role="viewer")})
    assert_error(r, 403, "forbidden")
    # Body checks: Content-Type, then size, then JSON, then headers, then the control plane.
    admin = gateway.headers()
    r = await gateway.http.patch(path, content=b"x" * 70000, headers={"content-type": "text/html", **admin})
    assert_error(r, 415, "unsupported_media_type")
    r = await gateway.http.patch(path, content=b"x" * 70000, headers={"content-type": "application/json", **admin})
    assert_error(r, 413, "payload_too_large")
    r = await gateway.http.patch(path, content=b"[", headers={"content-type": "application/json", "if-match": "x", **admin})
    assert_error(r, 400, "invalid_json")
    r = await gateway.http.patch(path, json={"action": "nope"}, headers={"if-match": "x", **admin})
    assert_error(r, 422, "invalid_request", "If-Match")
    r = await gateway.http.patch(path, json={"action": "nope"}, headers=admin)
    assert_error(r, 422, "invalid_traffic_config")


async def test_unknown_route_404_and_wrong_method_405_are_json(gateway):
    r = await gateway.http.get("/v1/nothing/here", headers=gateway.headers())
    assert_error(r, 404, "not_found", "/v1/nothing/here")
    r = await gateway.http.get("/", headers={"accept": "text/html"})
    assert_error(r, 404, "not_found")
    r = await gateway.http.get("/v1/models/", headers=gateway.headers())  # no redirect, JSON
    assert_error(r, 404, "not_found")
    r = await gateway.http.post("/v1/deployments/dep_x", headers=gateway.headers(), json={})
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "DELETE"}
    r = await gateway.http.patch("/v1/models", headers=gateway.headers(), json={})
    assert_error(r, 405, "method_not_allowed")


async def test_503_unavailable_when_the_control_plane_is_stopped_then_recovery(controlplanes, open_gateway):
    """With the default timeouts: 503 within 5 s, nothing written, and the gateway finds the
    control plane again when it comes back on its address."""
    cp = await controlplanes.start()
    async with open_gateway(cp.address, timeouts=CallTimeouts()) as gw:
        slug, _, challenger = await gw.deploy()
        await controlplanes.stop(cp)

        async def timed(method, path, body):
            started = time.monotonic()
            r = await gw.http.request(method, path, json=body, headers=gw.headers())
            return r, time.monotonic() - started

        answers = await asyncio.gather(
            timed("GET", f"/v1/deployments/{slug}", None),
            timed("PATCH", f"/v1/deployments/{slug}/traffic",
                  {"action": "add_challenger", "model_id": challenger, "traffic_pct": 10}),
            timed("POST", "/v1/models", {"endpoint": "127.0.0.1:1", "model_name": "m"}))
        for r, elapsed in answers:
            assert_error(r, 503, "unavailable")
            assert elapsed < 5.0, f"{r.request.method} {r.request.url.path} took {elapsed:.2f} s"
        assert (await gw.http.get("/healthz")).status_code == 200  # liveness does not depend on it

        await controlplanes.start(listen=cp.address)
        r = await gw.http.get(f"/v1/deployments/{slug}/history", headers=gw.headers())
        assert r.status_code == 200, r.text  # reconnected within the read's wait
        assert len(r.json()["versions"]) == 1
        models = (await gw.http.get("/v1/models", headers=gw.headers())).json()["models"]
        assert len(models) == 2  # the POST above wrote nothing


async def test_503_unavailable_when_etcd_is_down(etcd_private, controlplanes, open_gateway):
    cp = await controlplanes.start(etcd_endpoint=etcd_private.endpoint)
    async with open_gateway(cp.address) as gw:
        slug, _, challenger = await gw.deploy()
        etcd_private.stop()
        started = time.monotonic()
        r = await gw.http.get(f"/v1/deployments/{slug}", headers=gw.headers())
        assert_error(r, 503, "unavailable")
        r = await gw.http.post("/v1/models", json={"endpoint": "127.0.0.1:1", "model_name": "m"}, headers=gw.headers())
        assert_error(r, 503, "unavailable")
        assert time.monotonic() - started < 10.0
