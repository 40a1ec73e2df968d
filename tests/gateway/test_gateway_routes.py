"""The REST routes end to end: httpx -> gateway (uvicorn) -> control plane (gRPC) -> etcd.

Every answer is also checked against the gateway's OpenAPI document (conftest)."""

from __future__ import annotations

import re

import pytest

from tsplit.resources import new_id


async def patch(gw, slug: str, body: dict, **headers):
    return await gw.http.patch(f"/v1/deployments/{slug}/traffic", json=body, headers={**gw.headers(), **headers})


async def test_the_seed_request_gets_the_seed_response(gateway):
    """The Cali-br page's curl: add_challenger 10 % answers deployment_id, action,
    challenger {id, model_id, traffic_pct, is_active} and cache_version, traffic_pct an int."""
    champion, challenger = await gateway.register("iris-a"), await gateway.register("iris-b")
    slug = f"dep_{new_id('')}"
    created = await gateway.create_deployment(champion["model_id"], slug)
    assert created["cache_version"] == 1 and created["deployment_id"] == slug

    r = await gateway.http.patch(
        f"/v1/deployments/{slug}/traffic",
        content=b'{"action": "add_challenger", "model_id": "%s", "traffic_pct": 10}' % challenger["model_id"].encode(),
        headers={**gateway.headers(), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["deployment_id", "action", "challenger", "cache_version"]
    assert list(body["challenger"]) == ["id", "model_id", "traffic_pct", "is_active"]
    assert body["deployment_id"] == slug and body["action"] == "add_challenger" and body["cache_version"] == 2
    assert re.fullmatch(r"ch_[A-Za-z0-9_-]+", body["challenger"]["id"])
    assert body["challenger"]["model_id"] == challenger["model_id"] and body["challenger"]["is_active"] is True
    assert '"traffic_pct":10,' in r.text  # 10, not 10.0
    assert r.headers["etag"] == '"2"'


async def test_the_four_actions_and_the_reads(gateway):
    a, b = await gateway.register("a"), await gateway.register("b")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    added = (await patch(gateway, slug, {"action": "add_challenger", "model_id": b["model_id"], "traffic_pct": 12.5})).json()
    ch = added["challenger"]["id"]
    assert added["challenger"]["traffic_pct"] == 12.5

    updated = await patch(gateway, slug, {"action": "update_traffic", "challenger_id": ch, "traffic_pct": 20})
    assert updated.status_code == 200 and updated.json()["challenger"]["traffic_pct"] == 20
    assert updated.json()["cache_version"] == 3

    shadow = await patch(gateway, slug, {"action": "toggle_shadow", "shadow_mode": True})
    assert shadow.json() == {"deployment_id": slug, "action": "toggle_shadow", "shadow_mode": True, "cache_version": 4}

    removed = await patch(gateway, slug, {"action": "remove_challenger", "challenger_id": ch})
    assert removed.json()["challenger"] == {"id": ch, "model_id": b["model_id"], "traffic_pct": 20, "is_active": False}
    assert removed.json()["cache_version"] == 5

    got = await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers(role="viewer"))
    assert got.status_code == 200 and got.headers["etag"] == '"5"'
    assert got.json()["shadow_mode"] is True and got.json()["challengers"][0]["is_active"] is False

    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert [v["cache_version"] for v in history["versions"]] == [1, 2, 3, 4, 5]
    assert [v["action"] for v in history["versions"]][1:] == [
        "add_challenger", "update_traffic", "toggle_shadow", "remove_challenger"]
    assert history["versions"][-1]["config"] == got.json()
    assert history["versions"][2]["config"]["challengers"][0]["traffic_pct"] == 20

    listed = (await gateway.http.get("/v1/deployments", headers=gateway.headers())).json()
    assert [d["deployment_id"] for d in listed["deployments"]] == [slug]
    models = (await gateway.http.get("/v1/models", headers=gateway.headers())).json()["models"]
    assert sorted(m["model_id"] for m in models) == sorted([a["model_id"], b["model_id"]])
    one = await gateway.http.get(f"/v1/models/{a['model_id']}", headers=gateway.headers(role="viewer"))
    assert one.status_code == 200 and one.json() == a


async def test_a_no_op_answers_the_current_version_and_writes_nothing(gateway):
    a = await gateway.register("a")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    r = await patch(gateway, slug, {"action": "toggle_shadow", "shadow_mode": False})
    assert r.status_code == 200 and r.json()["cache_version"] == 1
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert len(history["versions"]) == 1


async def test_apply_rollback_delete(gateway):
    a, b, c = [await gateway.register(name) for name in "abc"]
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    desired = {"deployment": slug, "champion": a["model_id"], "shadow_mode": False,
               "challengers": [{"model_id": b["model_id"], "traffic_pct": 10},
                               {"model_id": c["model_id"], "traffic_pct": 5.25}]}
    applied = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert applied.status_code == 200, applied.text
    assert applied.json()["changed"] is True and applied.json()["deployment"]["cache_version"] == 2
    assert sorted(ch["traffic_pct"] for ch in applied.json()["deployment"]["challengers"]) == [5.25, 10]

    again = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert again.json()["changed"] is False and again.json()["deployment"]["cache_version"] == 2

    back = await gateway.http.post(f"/v1/deployments/{slug}/rollback", json={"to_version": 1}, headers=gateway.headers())
    assert back.status_code == 200, back.text
    assert back.json()["deployment"]["cache_version"] == 3
    assert [ch["is_active"] for ch in back.json()["deployment"]["challengers"]] == [False, False]

    deleted = await gateway.http.delete(f"/v1/deployments/{slug}", headers={**gateway.headers(), "If-Match": "3"})
    assert deleted.status_code == 200 and deleted.json() == {"deployment_id": slug}
    gone = await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())
    assert gone.status_code == 404 and gone.json()["error"] == "deployment_not_found"


async def test_promote_makes_the_challenger_champion_and_rollback_restores_the_old_one(gateway):
    a, b, c = [await gateway.register(name) for name in "abc"]
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    ch_b = (await patch(gateway, slug, {"action": "add_challenger", "model_id": b["model_id"], "traffic_pct": 20})
            ).json()["challenger"]["id"]
    await patch(gateway, slug, {"action": "add_challenger", "model_id": c["model_id"], "traffic_pct": 10})
    before = (await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())).json()
    assert before["allocation"] == [{"variant": "champion", "start": 0, "end": 7000},
                                    {"variant": before["challengers"][1]["id"], "start": 7000, "end": 8000},
                                    {"variant": ch_b, "start": 8000, "end": 10000}]

    r = await patch(gateway, slug, {"action": "promote_challenger", "challenger_id": ch_b})
    assert r.status_code == 200, r.text
    assert r.json() == {"deployment_id": slug, "action": "promote_challenger",
                        "challenger": {"id": ch_b, "model_id": b["model_id"], "traffic_pct": 20, "is_active": False},
                        "champion_model_id": b["model_id"], "cache_version": 4}
    after = (await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())).json()
    assert after["champion_model_id"] == b["model_id"]
    assert a["model_id"] not in {ch["model_id"] for ch in after["challengers"]}  # the old champion is dropped
    assert after["allocation"] == [{"variant": "champion", "start": 0, "end": 7000},
                                   before["allocation"][1], {"variant": "champion", "start": 8000, "end": 10000}]

    back = await gateway.http.post(f"/v1/deployments/{slug}/rollback", json={"to_version": 3}, headers=gateway.headers())
    assert back.status_code == 200, back.text
    assert back.json()["deployment"]["champion_model_id"] == a["model_id"]
    assert back.json()["deployment"]["allocation"] == before["allocation"]

    gone = await patch(gateway, slug, {"action": "promote_challenger", "challenger_id": "ch_nosuch"})
    assert gone.status_code == 422 and gone.json()["error"] == "invalid_traffic_config"


async def test_idempotency_key_replays_the_first_answer(gateway):
    a, b = await gateway.register("a"), await gateway.register("b")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    body = {"action": "add_challenger", "model_id": b["model_id"], "traffic_pct": 10}
    first = await patch(gateway, slug, body, **{"Idempotency-Key": "retry-me-1"})
    second = await patch(gateway, slug, body, **{"Idempotency-Key": "retry-me-1"})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.headers["idempotency-key"] == "retry-me-1"
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert len(history["versions"]) == 2  # applied once

    # Without a key the gateway makes one up and hands it back.
    made_up = await patch(gateway, slug, {"action": "toggle_shadow", "shadow_mode": True})
    assert re.fullmatch(r"[0-9a-f]{32}", made_up.headers["idempotency-key"])


async def test_if_match_equal_to_the_current_version_applies(gateway):
    a = await gateway.register("a")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    r = await patch(gateway, slug, {"action": "toggle_shadow", "shadow_mode": True}, **{"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["cache_version"] == 2


async def test_status_has_a_champion_row(gateway):
    a = await gateway.register("a")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    r = await gateway.http.get(f"/v1/deployments/{slug}/status", headers=gateway.headers(role="viewer"))
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["deployment_id"] == slug and status["cache_version"] == 1 and status["routers"] == []
    champion = next(v for v in status["variants"] if v["variant"] == "champion")
    assert champion["traffic_pct"] == 100 and isinstance(champion["traffic_pct"], int)
    assert champion["label_agreement"] is None


async def test_healthz_needs_no_token(gateway):
    r = await gateway.http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize("charset", ["", "; charset=utf-8"])
async def test_json_content_type_with_or_without_charset(gateway, charset):
    r = await gateway.http.post("/v1/models", content=b'{"endpoint": "127.0.0.1:1", "model_name": "m"}',
                                headers={**gateway.headers(), "Content-Type": "application/json" + charset})
    assert r.status_code == 201, r.text


async def test_guardrails_put_stores_the_policy_as_one_version_and_empty_removes_it(gateway):
    a, b = await gateway.register("a"), await gateway.register("b")
    slug = (await gateway.create_deployment(a["model_id"]))["deployment_id"]
    url = f"/v1/deployments/{slug}/guardrails"
    got = await gateway.http.get(f"/v1/deployments/{slug}", headers=gateway.headers())
    assert "guardrails" not in got.json()

    r = await gateway.http.put(url, json={"alpha": 0.05, "steps": [5, 10]}, headers=gateway.headers())
    assert r.status_code == 200, r.text
    assert r.json()["deployment"]["cache_version"] == 2 and r.json()["changed"] is True
    assert r.json()["deployment"]["guardrails"] == {
        "alpha": 0.05, "error_rate": True, "latency_quantile": 0.99, "srm": True, "steps": [5, 10],
        "step_after_requests": 2000}
    same = await gateway.http.put(url, json={"alpha": 0.05, "steps": [5, 10]}, headers=gateway.headers())
    assert same.json()["changed"] is False and same.json()["deployment"]["cache_version"] == 2

    bad = await gateway.http.put(url, json={"alpha": 0.7}, headers=gateway.headers())
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request" and "alpha" in bad.json()["message"]
    typo = await gateway.http.put(url, json={"step_after_request": 5}, headers=gateway.headers())
    assert typo.status_code == 422 and "step_after_requests" in typo.json()["message"]

    desired = {"champion": a["model_id"], "shadow_mode": False,
               "challengers": [{"model_id": b["model_id"], "traffic_pct": 5}]}
    kept = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert kept.json()["deployment"]["guardrails"]["steps"] == [5, 10]  # absent from apply: unchanged
    wrong = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json={**desired, "guardrails": {"steps": [9, 3]}},
                                   headers=gateway.headers())
    assert wrong.status_code == 422 and wrong.json()["error"] == "invalid_traffic_config"
    assert "guardrails.steps" in wrong.json()["message"]
    applied = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json={**desired, "guardrails": {"alpha": 0.02}},
                                     headers=gateway.headers())
    assert applied.json()["deployment"]["guardrails"]["alpha"] == 0.02

    removed = await gateway.http.put(url, json={}, headers=gateway.headers())
    assert removed.status_code == 200 and "guardrails" not in removed.json()["deployment"]
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert [v["action"] for v in history["versions"]] == ["create", "set_guardrails", "apply", "apply", "set_guardrails"]
    assert all("evidence" not in v for v in history["versions"])
