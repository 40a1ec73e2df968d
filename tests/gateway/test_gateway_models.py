"""Models can be changed (PATCH) and deleted (DELETE, 409 model_in_use while used), through
the real gateway and control plane; every answer is checked against the OpenAPI document."""

from __future__ import annotations

from tsplit.resources import new_id


async def test_patch_changes_the_given_fields_and_keeps_the_others(gateway):
    model = await gateway.register("iris", model_version="1")
    assert model["http_endpoint"] == ""
    r = await gateway.http.patch(f"/v1/models/{model['model_id']}",
                                 json={"endpoint": "127.0.0.1:9555", "http_endpoint": "127.0.0.1:9556"},
                                 headers=gateway.headers())
    assert r.status_code == 200, r.text
    assert r.json() == {**model, "endpoint": "127.0.0.1:9555", "http_endpoint": "127.0.0.1:9556"}
    got = await gateway.http.get(f"/v1/models/{model['model_id']}", headers=gateway.headers(role="viewer"))
    assert got.json() == r.json()
    cleared = await gateway.http.patch(f"/v1/models/{model['model_id']}", json={"http_endpoint": None, "model_version": ""},
                                       headers=gateway.headers())
    assert cleared.json()["http_endpoint"] == "" and cleared.json()["model_version"] == ""


async def test_register_takes_an_http_endpoint_and_checks_its_syntax(gateway):
    model = await gateway.register("iris", http_endpoint="127.0.0.1:8081")
    assert model["http_endpoint"] == "127.0.0.1:8081"
    bad = await gateway.http.post("/v1/models", json={"endpoint": "127.0.0.1:1", "model_name": "m", "http_endpoint": "nope"},
                                  headers=gateway.headers())
    assert bad.status_code == 422 and "http_endpoint" in bad.json()["message"]


async def test_patch_rejects_unknown_fields_bad_endpoints_and_empty_bodies(gateway):
    model_id = (await gateway.register("iris"))["model_id"]
    for body, word in (({"endpiont": "127.0.0.1:1"}, "endpiont"), ({"endpoint": "no-port"}, "endpoint"),
                       ({}, "at least one"), ({"model_id": "mod_other123"}, "model_id")):
        r = await gateway.http.patch(f"/v1/models/{model_id}", json=body, headers=gateway.headers())
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        assert word in r.json()["message"]


async def test_model_changes_check_the_org_before_the_role(gateway):
    model_id = (await gateway.register("iris"))["model_id"]
    other_org = await gateway.http.patch(f"/v1/models/{model_id}", json={"model_name": "x"},
                                         headers=gateway.headers(org_id="org_2"))
    assert other_org.status_code == 404 and other_org.json()["error"] == "model_not_found"
    viewer = await gateway.http.patch(f"/v1/models/{model_id}", json={"model_name": "x"},
                                      headers=gateway.headers(role="viewer"))
    assert viewer.status_code == 403
    viewer_delete = await gateway.http.delete(f"/v1/models/{model_id}", headers=gateway.headers(role="viewer"))
    assert viewer_delete.status_code == 403
    missing = await gateway.http.delete(f"/v1/models/mod_{new_id('')}", headers=gateway.headers())
    assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"


async def test_delete_answers_model_in_use_while_a_deployment_names_it(gateway):
    slug, champion, other = await gateway.deploy()
    added = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=gateway.headers(),
                                     json={"action": "add_challenger", "model_id": other, "traffic_pct": 10})
    challenger_id = added.json()["challenger"]["id"]
    for model_id, role in ((champion, "champion"), (other, f"challenger {challenger_id}")):
        r = await gateway.http.delete(f"/v1/models/{model_id}", headers=gateway.headers())
        assert r.status_code == 409 and r.json()["error"] == "model_in_use", r.text
        assert f"{slug} ({role})" in r.json()["message"]
    # Removed, the challenger is inactive: the model may go; the deployment keeps routing.
    await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=gateway.headers(),
                             json={"action": "remove_challenger", "challenger_id": challenger_id})
    r = await gateway.http.delete(f"/v1/models/{other}", headers=gateway.headers())
    assert r.status_code == 200 and r.json() == {"model_id": other}
    assert (await gateway.http.get(f"/v1/models/{other}", headers=gateway.headers())).status_code == 404
    # A deleted model can no longer be added as a challenger.
    again = await gateway.http.patch(f"/v1/deployments/{slug}/traffic", headers=gateway.headers(),
                                     json={"action": "add_challenger", "model_id": other, "traffic_pct": 10})
    assert again.status_code == 422 and other in again.json()["message"]


async def test_a_deleted_deployment_frees_its_models(gateway):
    slug, champion, _ = await gateway.deploy()
    assert (await gateway.http.delete(f"/v1/deployments/{slug}", headers=gateway.headers())).status_code == 200
    assert (await gateway.http.delete(f"/v1/models/{champion}", headers=gateway.headers())).status_code == 200


async def test_model_changes_replay_with_the_same_idempotency_key(gateway):
    model_id = (await gateway.register("iris"))["model_id"]
    headers = {**gateway.headers(), "Idempotency-Key": "k-model-1"}
    first = await gateway.http.patch(f"/v1/models/{model_id}", json={"model_name": "iris-2"}, headers=headers)
    await gateway.http.patch(f"/v1/models/{model_id}", json={"model_name": "iris-3"}, headers=gateway.headers())
    replay = await gateway.http.patch(f"/v1/models/{model_id}", json={"model_name": "iris-2"}, headers=headers)
    assert replay.status_code == 200 and replay.json() == first.json()
    got = await gateway.http.get(f"/v1/models/{model_id}", headers=gateway.headers())
    assert got.json()["model_name"] == "iris-3"  # the replay applied nothing


async def test_apply_on_a_slug_that_never_existed_creates_it_as_version_1(gateway):
    champion, other = await gateway.register("champ"), await gateway.register("chall")
    slug = f"dep_{new_id('')}"
    desired = {"champion": champion["model_id"], "shadow_mode": True,
               "challengers": [{"model_id": other["model_id"], "traffic_pct": 20}]}
    viewer = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers(role="viewer"))
    assert viewer.status_code == 404  # the gateway's 403 comes after the deployment's 404
    r = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers(org_id="org_7"))
    assert r.status_code == 422  # org_7 has no such models
    r = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["created"] is True and created["changed"] is True
    dep = created["deployment"]
    assert dep["cache_version"] == 1 and dep["org_id"] == "org_1" and dep["shadow_mode"] is True
    assert dep["champion_model_id"] == champion["model_id"]
    assert [(c["model_id"], c["traffic_pct"]) for c in dep["challengers"]] == [(other["model_id"], 20)]
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert [v["cache_version"] for v in history["versions"]] == [1]
    again = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert again.status_code == 200 and again.json()["changed"] is False and "created" not in again.json()
    # Another org cannot take the slug; a deleted slug is never created again.
    theirs = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers(org_id="org_7"))
    assert theirs.status_code == 404
    await gateway.http.delete(f"/v1/deployments/{slug}", headers=gateway.headers())
    gone = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=gateway.headers())
    assert gone.status_code == 409 and gone.json()["error"] == "already_exists"


async def test_a_retried_creating_apply_answers_the_first_result(gateway):
    champion = await gateway.register("champ")
    slug = f"dep_{new_id('')}"
    desired = {"champion": champion["model_id"], "shadow_mode": False, "challengers": []}
    headers = {**gateway.headers(), "Idempotency-Key": "k-create-apply"}
    first = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=headers)
    assert first.status_code == 201, first.text
    replay = await gateway.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=headers)
    assert replay.status_code == 200 and replay.json()["deployment"] == first.json()["deployment"]
    history = (await gateway.http.get(f"/v1/deployments/{slug}/history", headers=gateway.headers())).json()
    assert len(history["versions"]) == 1
