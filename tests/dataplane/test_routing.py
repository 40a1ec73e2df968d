"""The routing core: split accuracy, stickiness, minimal movement, forcing, mirroring."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from dataplane.routing import (
    CHAMPION, DeploymentRoute, RoutingTable, UnknownVariant, Variant, build_routing_table)
from tsplit.allocation import slot_of
from tsplit.resources import BASIS_POINTS, Challenger, Deployment, Model, loads

Z_999 = 3.2905  # two-sided 99.9 % normal quantile


def binomial_bound(n: int, p: float, z: float = Z_999) -> float:
    return z * math.sqrt(n * p * (1 - p))


def assert_share(count: int, n: int, weight_bp: int, z: float = Z_999) -> None:
    p = weight_bp / BASIS_POINTS
    assert abs(count - n * p) <= binomial_bound(n, p, z) + 1, (count, n * p, weight_bp)


def make_route(weights: dict[str, int], shadow: bool = False, rng=None) -> DeploymentRoute:
    """A route with the given challenger shares; the champion gets the rest (split mode)."""
    challengers = tuple(Variant(name, f"mod_{name}", "127.0.0.1:1", f"m-{name}", "", bp)
                        for name, bp in weights.items())
    champion_bp = BASIS_POINTS if shadow else BASIS_POINTS - sum(weights.values())
    kwargs = {"rng": rng} if rng is not None else {}
    return DeploymentRoute("dep_t", 3, shadow, Variant(CHAMPION, "mod_c", "127.0.0.1:1", "m-c", "", champion_bp),
                           challengers, **kwargs)


def keys(n: int, tag: str = "user") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


# --- split without a key ----------------------------------------------------------------

def test_no_key_choice_is_uniform_over_basis_points_exactly():
    """Feeding every basis point once gives each variant exactly its weight."""
    weights = {"ch_a": 1000, "ch_b": 1, "ch_c": 2499}
    points = iter([(t + 0.5) / BASIS_POINTS for t in range(BASIS_POINTS)])
    route = make_route(weights, rng=lambda: next(points))
    counts = Counter(route.choose().name for _ in range(BASIS_POINTS))
    assert counts == {**weights, CHAMPION: BASIS_POINTS - sum(weights.values())}


def test_no_key_split_within_binomial_bound_including_one_basis_point():
    weights = {"ch_small": 1, "ch_big": 2500}
    route = make_route(weights, rng=random.Random(20261122).random)
    n = 400_000
    counts = Counter(route.choose().name for _ in range(n))
    for variant in route.variants:
        assert_share(counts[variant.name], n, variant.weight_bp)
    assert counts["ch_small"] > 0


def test_default_rng_splits_too():
    route = make_route({"ch_a": 3000})
    n = 20_000
    counts = Counter(route.choose().name for _ in range(n))
    assert_share(counts["ch_a"], n, 3000, z=5.0)


# --- sticky routing ---------------------------------------------------------------------

def test_keyed_split_within_binomial_bound():
    weights = {"ch_a": 1000, "ch_b": 100}
    route = make_route(weights)
    n = 60_000
    counts = Counter(route.choose(k).name for k in keys(n))
    for variant in route.variants:
        assert_share(counts[variant.name], n, variant.weight_bp)


def test_same_key_same_variant_on_every_router_whatever_its_draws():
    weights = {"ch_a": 2000, "ch_b": 1500, "ch_c": 500}
    route = make_route(weights, rng=random.Random(1).random)
    other_router = make_route(weights, rng=random.Random(2).random)
    sample = keys(3000)
    first = [route.choose(k).name for k in sample]
    assert first == [route.choose(k).name for k in sample]
    assert first == [other_router.choose(k).name for k in sample]
    assert first == [route.choose(k.decode()).name for k in sample]  # a str key hashes as its UTF-8
    assert len(set(first)) == 4


def test_the_slot_is_the_spec_hash_and_its_owner_answers():
    """slot = blake2b(slug NUL key, 8 bytes) big-endian mod 10,000; the route's slots say who owns it."""
    route = make_route({"ch_a": 2000, "ch_b": 1500})  # champion 0-6500, ch_a 6500-8500, ch_b 8500-10000
    assert route.slots == ((0, 6500, 0), (6500, 8500, 1), (8500, 10000, 2))
    for k in keys(500):
        slot = int.from_bytes(hashlib.blake2b(b"dep_t\x00" + k, digest_size=8).digest(), "big") % 10000
        assert route.slot(k) == slot
        assert route.choose(k).name == (CHAMPION if slot < 6500 else "ch_a" if slot < 8500 else "ch_b")


def test_keyed_choice_is_the_same_in_another_process():
    """No per-process salt (Python's hash()): a fresh interpreter agrees key by key."""
    weights = {"ch_a": 2000, "ch_b": 1500}
    sample = keys(500)
    here = [make_route(weights).choose(k).name for k in sample]
    script = (
        "import json, sys\n"
        "from dataplane.routing import CHAMPION, DeploymentRoute, Variant\n"
        "w = json.loads(sys.argv[1])\n"
        "ch = tuple(Variant(n, 'mod_' + n, '127.0.0.1:1', 'm-' + n, '', bp) for n, bp in w.items())\n"
        "r = DeploymentRoute('dep_t', 3, False, Variant(CHAMPION, 'mod_c', '127.0.0.1:1', 'm-c', '', "
        "10000 - sum(w.values())), ch)\n"
        "print(json.dumps([r.choose(f'user-{i}'.encode()).name for i in range(int(sys.argv[2]))]))\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(weights), str(len(sample))],
                         capture_output=True, text=True, timeout=30, cwd=repo,
                         env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == here


def test_empty_key_counts_as_no_key():
    points = iter([0.999999] * 3)
    route = make_route({"ch_a": 1000}, rng=lambda: next(points))
    assert route.choose(b"").name == "ch_a"  # the draw, not a hash: the top of the range is the last variant


# --- minimal movement -------------------------------------------------------------------

MODELS_ABC = {m: Model(m, "127.0.0.1:1", m) for m in ("mod_c", "mod_a", "mod_b", "mod_d")}


def route_of(deployment: Deployment) -> DeploymentRoute:
    return build_routing_table([deployment], MODELS_ABC, revision=1).lookup(deployment.deployment_id)


def reweighed(deployment: Deployment, shares: dict[str, int]) -> Deployment:
    """The deployment with these challenger shares (absent: removed), as the control plane
    changes it: the allocation moves with replace()."""
    known = {c.id for c in deployment.challengers}
    challengers = tuple(replace(c, traffic_bp=shares.get(c.id, c.traffic_bp), is_active=c.id in shares)
                        for c in deployment.challengers)
    added = tuple(Challenger(i, "mod_d", bp) for i, bp in shares.items() if i not in known)
    return replace(deployment, challengers=challengers + added)


@pytest.mark.parametrize("after_w", [
    {"ch_a": 3000, "ch_b": 1000},                  # update_traffic up
    {"ch_a": 2000, "ch_b": 500},                   # update_traffic down
    {"ch_b": 1000},                                # remove_challenger
    {"ch_a": 2000, "ch_b": 1000, "ch_d": 1234},    # add_challenger
    {"ch_a": 500, "ch_b": 3000, "ch_d": 1},        # several at once (apply, rollback)
])
def test_a_key_moves_exactly_when_its_slot_changes_owner(after_w):
    before = Deployment("dep_t", "org_1", "mod_c", (Challenger("ch_a", "mod_a", 2000), Challenger("ch_b", "mod_b", 1000)))
    after = reweighed(before, after_w)
    old, new = route_of(before), route_of(after)
    owner_before, owner_after = owners(before.allocation), owners(after.allocation)
    weight_moved = sum(abs(after_w.get(n, 0) - bp) for n, bp in {"ch_a": 2000, "ch_b": 1000, "ch_d": 0}.items())
    assert sum(a != b for a, b in zip(owner_before, owner_after)) == weight_moved
    moved = 0
    for k in keys(20_000):
        a, b = old.choose(k).name, new.choose(k).name
        slot = slot_of("dep_t", k)
        assert (a, b) == (owner_before[slot], owner_after[slot])
        if a != b:
            assert CHAMPION in (a, b)  # never from one challenger to another
            moved += 1
    assert_share(moved, 20_000, weight_moved)


def owners(allocation) -> list[str]:
    return [variant for variant, start, end in allocation for _ in range(start, end)]


def test_unchanged_weights_move_nothing():
    d = Deployment("dep_t", "org_1", "mod_c", (Challenger("ch_a", "mod_a", 1000), Challenger("ch_b", "mod_b", 700)))
    before, after = route_of(d), route_of(replace(d, shadow_mode=False, cache_version=2))
    assert all(before.choose(k) == after.choose(k) for k in keys(5000))


# --- forced variant ---------------------------------------------------------------------

def test_forced_variant_wins_over_key_and_weights():
    route = make_route({"ch_a": 1, "ch_b": 5000})
    for k in keys(200):
        assert route.choose(k, forced="ch_a").name == "ch_a"
        assert route.choose(k, forced=CHAMPION).name == CHAMPION
    shadow = make_route({"ch_a": 1000}, shadow=True)
    assert shadow.choose(forced="ch_a").name == "ch_a"


def test_unknown_forced_variant_is_a_clear_error():
    route = make_route({"ch_a": 1000})
    with pytest.raises(UnknownVariant) as err:
        route.choose(b"k", forced="ch_gone")
    message = str(err.value)
    assert "x-tsplit-variant" in message and "ch_gone" in message and "dep_t" in message and "ch_a" in message


# --- shadow mode ------------------------------------------------------------------------

def test_shadow_champion_answers_and_the_slot_owner_gets_the_mirror():
    weights = {"ch_a": 1000, "ch_b": 2500}
    route = make_route(weights, shadow=True, rng=random.Random(7).random)
    n = 100_000
    counts: Counter[str] = Counter()
    for _ in range(n):
        assert route.choose() is route.champion
        mirrored = route.mirrors()
        assert len(mirrored) <= 1
        counts.update(v.name for v in mirrored)
    for name, bp in weights.items():
        assert_share(counts[name], n, bp)


def test_keyed_mirrors_are_sticky_and_go_to_the_owner_of_the_slot():
    route = make_route({"ch_a": 1000, "ch_b": 3000}, shadow=True)
    split = make_route({"ch_a": 1000, "ch_b": 3000})
    sample = keys(40_000)
    for k in sample[:2000]:
        owner = split.choose(k)
        assert route.choose(k) is route.champion
        assert route.mirrors(k) == (() if owner.is_champion else (route.variant(owner.name),))
        assert route.mirrors(k) == route.mirrors(k)
    assert_share(sum(1 for k in sample if route.mirrors(k)), len(sample), 4000)


def test_split_mode_has_no_mirrors():
    route = make_route({"ch_a": 5000})
    assert route.mirrors() == () and route.mirrors(b"key") == ()


# --- the table --------------------------------------------------------------------------

MODELS = {m.model_id: m for m in (
    Model("mod_champ", "127.0.0.1:9001", "linear-a", "1"),
    Model("mod_b", "127.0.0.1:9002", "linear-b"),
    Model("mod_c", "127.0.0.1:9003", "linear-c"),
)}


def test_build_routing_table_from_deployments():
    deployments = [
        Deployment("dep_ok", "org_1", "mod_champ", (
            Challenger("ch_1", "mod_b", 1000), Challenger("ch_old", "mod_c", 2000, is_active=False),
            Challenger("ch_lost", "mod_missing", 500)), cache_version=7),
        Deployment("dep_shadow", "org_1", "mod_champ", (Challenger("ch_2", "mod_c", 1234),), shadow_mode=True),
        Deployment("dep_orphan", "org_1", "mod_gone"),
    ]
    table = build_routing_table(deployments, MODELS, revision=42)
    assert table.revision == 42 and set(table.routes) == {"dep_ok", "dep_shadow"}
    ok = table.lookup("dep_ok")
    assert ok.cache_version == 7 and not ok.shadow_mode
    assert [(v.name, v.weight_bp) for v in ok.variants] == [(CHAMPION, 9000), ("ch_1", 1000)]
    assert (ok.champion.endpoint, ok.champion.model_name, ok.champion.model_version) == ("127.0.0.1:9001",
                                                                                          "linear-a", "1")
    shadow = table.lookup("dep_shadow")
    assert [(v.name, v.weight_bp) for v in shadow.variants] == [(CHAMPION, BASIS_POINTS), ("ch_2", 1234)]
    assert table.lookup("dep_orphan") is None and table.lookup("dep_never") is None
    assert any("dep_orphan" in p and "mod_gone" in p for p in table.problems)
    assert any("ch_lost" in p and "mod_missing" in p for p in table.problems)
    assert len(table.problems) == 2


def test_table_routes_are_read_only():
    table = RoutingTable(1, {"dep_t": make_route({})})
    with pytest.raises(TypeError):
        table.routes["dep_x"] = make_route({})  # type: ignore[index]


@pytest.mark.parametrize("champion_bp, challengers, shadow, fragment", [
    (9000, {"ch_a": 500}, False, "sum to"),
    (9000, {"ch_a": 1000}, True, "shadow mode"),
    (10000, {"champion": 0}, False, "unique"),
    (10000, {"ch_a": -1}, True, "weight_bp"),
])
def test_inconsistent_routes_are_refused(champion_bp, challengers, shadow, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeploymentRoute("dep_bad", 1, shadow, Variant(CHAMPION, "m", "e:1", "n", "", champion_bp),
                        tuple(Variant(n, "m", "e:1", "n", "", bp) for n, bp in challengers.items()))


def test_a_route_follows_the_stored_allocation_and_a_missing_challengers_slots_go_to_the_champion():
    stored = {"deployment_id": "dep_t", "champion_model_id": "mod_c", "cache_version": 3, "challengers": [
        {"id": "ch_a", "model_id": "mod_a", "traffic_pct": 10, "is_active": True},
        {"id": "ch_x", "model_id": "mod_gone", "traffic_pct": 5, "is_active": True}],
        "allocation": [{"variant": "ch_a", "start": 0, "end": 1000}, {"variant": "champion", "start": 1000, "end": 9500},
                       {"variant": "ch_x", "start": 9500, "end": 10000}]}
    route = route_of(Deployment.from_json(stored))
    assert route.slots == ((0, 1000, 1), (1000, 10000, 0))
    assert [tuple(r) for r in route.allocation] == [("ch_a", 0, 1000), (CHAMPION, 1000, 10000)]
    assert [(v.name, v.weight_bp) for v in route.variants] == [(CHAMPION, 9000), ("ch_a", 1000)]


def test_a_config_written_without_allocation_routes_champion_first_then_challengers_in_order():
    old_code = loads(b'{"deployment_id":"dep_t","org_id":"org_1","champion_model_id":"mod_c","challengers":['
                     b'{"id":"ch_b","model_id":"mod_b","traffic_pct":10,"is_active":true},'
                     b'{"id":"ch_a","model_id":"mod_a","traffic_pct":20,"is_active":true}],"shadow_mode":false,'
                     b'"cache_version":4,"updated_at":"","updated_by":""}')
    route = route_of(Deployment.from_json(old_code))
    assert route.slots == ((0, 7000, 0), (7000, 8000, 1), (8000, 10000, 2))
    assert Deployment.from_json(old_code).to_json()["allocation"] == [
        {"variant": "champion", "start": 0, "end": 7000}, {"variant": "ch_b", "start": 7000, "end": 8000},
        {"variant": "ch_a", "start": 8000, "end": 10000}]
