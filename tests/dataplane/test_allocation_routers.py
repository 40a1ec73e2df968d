"""Exact allocation through real routers (issue 15): with 4,000 routing keys and three
variants, every change the control plane makes moves exactly the keys whose slot changed
owner (0 needless), every router agrees on every key, and a deployment written without an
allocation (by the code before it) keeps routing and then moves minimally too."""

from __future__ import annotations

import asyncio

from controlplane.actions import apply_traffic_action, parse_traffic_action
from controlplane.store import ControlPlaneStore
from tsplit.allocation import slot_of
from tsplit.resources import Deployment, dumps, loads

KEYS = [f"user-{i}" for i in range(4000)]
SLUG = "dep_exact"


async def answers(dp, client, slug: str, keys: list[str], chunk: int = 200) -> dict[str, tuple[str, str]]:
    """key -> (tsplit-variant, tsplit-model-id) as the router answers it."""
    request = dp.infer_request(slug)
    out: dict[str, tuple[str, str]] = {}
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        got = await asyncio.gather(*(client.infer(request, metadata=(("x-routing-key", k),)) for k in part))
        for key, (_, md) in zip(part, got):
            out[key] = (md["tsplit-variant"], md["tsplit-model-id"])
    return out


def owner_of(deployment: Deployment, key: str) -> tuple[str, str]:
    """(variant, model id) owning the key's slot in the stored allocation."""
    slot = slot_of(deployment.deployment_id, key)
    variant = next(r.variant for r in deployment.allocation if r.start <= slot < r.end)
    model = deployment.champion_model_id if variant == "champion" else deployment.challenger(variant).model_id
    return variant, model


async def stored(etcd, layout, slug: str) -> Deployment:
    return Deployment.from_json(loads((await etcd.get(layout.deployment(slug))).value))


async def setup_models(backends):
    endpoint = await backends.start("lin")
    for model_id in ("mod_champ", "mod_a", "mod_b", "mod_c"):
        await backends.model(model_id, endpoint, "lin")


async def change(store: ControlPlaneStore, slug: str, body: dict) -> Deployment:
    action = parse_traffic_action(body)
    result = await store.change_deployment(
        "org_1", slug, lambda d, models: apply_traffic_action(d, action, models), action=body["action"],
        request_body=body, actor="test", request_id=f"{slug}-{body}")
    assert result.changed
    return result.deployment


async def check_routers_follow(dp, routers, clients, etcd, layout, slug, before, previous, rpc_keys):
    """Every router routes every key to the owner of its slot in the stored allocation: its
    live routing table for all 4,000 keys, and its gRPC answers for `rpc_keys` (a slice per
    step, so that together the steps send every key through every router). Returns (the
    stored deployment, key -> variant, keys moved since `previous`, keys whose slot changed
    owner since `before`)."""
    after = await stored(etcd, layout, slug)
    expected = {k: owner_of(after, k) for k in KEYS}
    for router, client in zip(routers, clients):
        await dp.wait_for_version(router, slug, after.cache_version)
        route = router.sync.table.lookup(slug)
        assert {k: (route.choose(k).name, route.choose(k).model_id) for k in KEYS} == expected
        assert await answers(dp, client, slug, rpc_keys) == {k: expected[k] for k in rpc_keys}
    if previous is None:
        return after, expected, 0, 0
    moved = sum(previous[k][0] != expected[k][0] for k in KEYS)
    needed = sum(owner_of(before, k)[0] != expected[k][0] for k in KEYS)
    return after, expected, moved, needed


def rpc_slice(step: int, steps: int) -> list[str]:
    size = -(-len(KEYS) // steps)
    return KEYS[step * size:(step + 1) * size]


async def test_every_change_moves_only_the_keys_whose_slot_changed_owner(
        backends, router_factory, client_factory, etcd, layout, dp):
    await setup_models(backends)
    store = ControlPlaneStore(etcd, layout)
    await store.create_deployment("org_1", SLUG, "mod_champ", actor="test", request_id="create", request_body={})
    await change(store, SLUG, {"action": "add_challenger", "model_id": "mod_a", "traffic_pct": 20})
    current = await change(store, SLUG, {"action": "add_challenger", "model_id": "mod_b", "traffic_pct": 10})
    first, second = (c.id for c in current.active_challengers)
    routers = [await router_factory(), await router_factory()]
    clients = [client_factory(r.address) for r in routers]
    steps = [
        {"action": "update_traffic", "challenger_id": first, "traffic_pct": 30},    # 10 % must move
        {"action": "update_traffic", "challenger_id": second, "traffic_pct": 5},    # 5 % must move
        {"action": "add_challenger", "model_id": "mod_c", "traffic_pct": 12.34},
        {"action": "remove_challenger", "challenger_id": first},                    # 30 % must move
    ]
    rounds = len(steps) + 2
    current, seen, _, _ = await check_routers_follow(
        dp, routers, clients, etcd, layout, SLUG, None, None, rpc_slice(0, rounds))
    for step, body in enumerate(steps, 1):
        await change(store, SLUG, body)
        current, seen_now, moved, needed = await check_routers_follow(
            dp, routers, clients, etcd, layout, SLUG, current, seen, rpc_slice(step, rounds))
        assert moved == needed, f"{body}: {moved} keys moved, {needed} had to (0 needless)"
        assert needed > 0
        seen = seen_now

    # Promote the second challenger: its keys keep their model; every other key's model is
    # the new champion's.
    before = current
    await change(store, SLUG, {"action": "promote_challenger", "challenger_id": second})
    current, seen_now, _, _ = await check_routers_follow(
        dp, routers, clients, etcd, layout, SLUG, before, seen, rpc_slice(rounds - 1, rounds))
    assert current.champion_model_id == "mod_b"
    for key in KEYS:
        if seen[key][0] == second:
            assert seen_now[key] == ("champion", "mod_b")
        elif seen[key][0] != "champion":
            assert seen_now[key] == seen[key]  # the other challenger's keys stay put
        else:
            assert seen_now[key] == ("champion", "mod_b")


async def test_a_deployment_written_without_allocation_routes_and_then_moves_minimally(
        backends, router_factory, client_factory, etcd, layout, dp):
    await setup_models(backends)
    old_code = {"deployment_id": "dep_legacy", "org_id": "org_1", "champion_model_id": "mod_champ",
                "challengers": [{"id": "ch_one", "model_id": "mod_a", "traffic_pct": 20, "is_active": True},
                                {"id": "ch_two", "model_id": "mod_b", "traffic_pct": 10, "is_active": True}],
                "shadow_mode": False, "cache_version": 3, "updated_at": "", "updated_by": "old"}
    await etcd.put(layout.deployment("dep_legacy"), dumps(old_code))
    routers = [await router_factory(), await router_factory()]
    clients = [client_factory(r.address) for r in routers]
    legacy, seen, _, _ = await check_routers_follow(
        dp, routers, clients, etcd, layout, "dep_legacy", None, None, rpc_slice(0, 4))
    assert {v for v, _ in seen.values()} == {"champion", "ch_one", "ch_two"}

    store = ControlPlaneStore(etcd, layout)
    await change(store, "dep_legacy", {"action": "update_traffic", "challenger_id": "ch_one", "traffic_pct": 30})
    raw = loads((await etcd.get(layout.deployment("dep_legacy"))).value)
    assert raw["cache_version"] == 4 and len(raw["allocation"]) >= 3  # the new code stores it from now on
    _, _, moved, needed = await check_routers_follow(
        dp, routers, clients, etcd, layout, "dep_legacy", legacy, seen, rpc_slice(1, 4))
    assert moved == needed and 300 < needed < 500  # 10 % of 4,000 keys, give or take the hash
