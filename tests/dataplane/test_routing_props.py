"""Properties of the routing core over generated deployments, weights and keys."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from dataplane.routing import CHAMPION, DeploymentRoute, Variant, build_routing_table
from tsplit.resources import BASIS_POINTS, Challenger, Deployment, Model

MAX_CHALLENGER_BP = BASIS_POINTS // 2  # the control plane caps the challengers' sum at 50 %

# No per-example deadline: the suite shares two cores with other runs, and these properties
# are about results, not speed.
NO_DEADLINE = settings(deadline=None)
challenger_ids = st.from_regex(r"ch_[A-Za-z0-9_-]{6}", fullmatch=True)
routing_keys = st.binary(min_size=1, max_size=40)


@st.composite
def challenger_weights(draw, min_size: int = 0, max_size: int = 6) -> dict[str, int]:
    names = draw(st.lists(challenger_ids, min_size=min_size, max_size=max_size, unique=True))
    weights: dict[str, int] = {}
    budget = MAX_CHALLENGER_BP
    for name in names:
        if budget < 1:
            break
        weights[name] = draw(st.integers(1, budget))
        budget -= weights[name]
    return weights


def route_of(weights: dict[str, int], shadow: bool = False) -> DeploymentRoute:
    champion_bp = BASIS_POINTS if shadow else BASIS_POINTS - sum(weights.values())
    return DeploymentRoute(
        "dep_p", 1, shadow, Variant(CHAMPION, "mod_c", "127.0.0.1:1", "c", "", champion_bp),
        tuple(Variant(n, "mod_" + n, "127.0.0.1:1", n, "", bp) for n, bp in weights.items()))


@NO_DEADLINE
@given(challenger_weights(), st.booleans())
def test_shares_sum_to_ten_thousand(weights, shadow):
    route = route_of(weights, shadow)
    if shadow:
        assert route.champion.weight_bp == BASIS_POINTS
    else:
        assert sum(v.weight_bp for v in route.variants) == BASIS_POINTS


@NO_DEADLINE
@given(challenger_weights(), st.lists(routing_keys, min_size=1, max_size=30), st.floats(0, 1, exclude_max=True))
def test_every_choice_is_an_existing_variant_and_keys_are_sticky(weights, sample, draw):
    route = route_of(weights)
    names = {v.name for v in route.variants}
    for key in sample:
        chosen = route.choose(key)
        assert chosen.name in names and chosen.weight_bp > 0
        assert route.choose(key) is chosen
    assert route.choose(None).name in names
    fixed = DeploymentRoute(route.slug, 1, False, route.champion, route.challengers, rng=lambda: draw)
    assert fixed.choose().weight_bp > 0


@st.composite
def weight_changes(draw) -> tuple[dict[str, int], dict[str, int]]:
    """Two configs over overlapping challengers: the same, some changed, added or removed."""
    before = draw(challenger_weights(min_size=1))
    after = {}
    for name, bp in before.items():
        action = draw(st.sampled_from(["keep", "change", "remove"]))
        if action == "keep":
            after[name] = bp
        elif action == "change":
            after[name] = draw(st.integers(1, MAX_CHALLENGER_BP))
    after.update(draw(challenger_weights(max_size=2)))
    while sum(after.values()) > MAX_CHALLENGER_BP:  # keep the 50 % cap: drop from the end
        after.pop(next(reversed(after)))
    return before, after


MODELS = {m: Model(m, "127.0.0.1:1", m) for m in ("mod_c", "mod_x")}


def deployment_of(weights: dict[str, int], shadow: bool = False) -> Deployment:
    return Deployment("dep_p", "org_1", "mod_c", tuple(Challenger(n, "mod_x", bp) for n, bp in weights.items()),
                      shadow_mode=shadow)


def changed(deployment: Deployment, weights: dict[str, int]) -> Deployment:
    """The deployment with new shares as the control plane makes it (replace moves the allocation)."""
    known = {c.id for c in deployment.challengers}
    return replace(deployment, challengers=tuple(
        replace(c, traffic_bp=weights.get(c.id, c.traffic_bp), is_active=c.id in weights)
        for c in deployment.challengers) + tuple(Challenger(n, "mod_x", bp) for n, bp in weights.items()
                                                 if n not in known))


def routed(deployment: Deployment) -> DeploymentRoute:
    return build_routing_table([deployment], MODELS, revision=1).lookup(deployment.deployment_id)


@settings(max_examples=150, deadline=None)
@given(weight_changes(), st.lists(routing_keys, min_size=1, max_size=50, unique=True), st.booleans())
def test_a_key_moves_only_with_its_slot_and_only_to_or_from_the_champion(change, sample, shadow):
    first = deployment_of(change[0], shadow)
    second = changed(first, change[1])
    before, after = routed(first), routed(second)
    for key in sample:
        slot = before.slot(key)
        a, b = before.owner(slot).name, after.owner(slot).name
        if shadow:
            assert [v.name for v in before.mirrors(key)] == ([] if a == CHAMPION else [a])
        else:
            assert (before.choose(key).name, after.choose(key).name) == (a, b)
        if a != b:
            assert CHAMPION in (a, b)
            grown = second.slot_weights().get(b, 0) > first.slot_weights().get(b, 0)
            assert grown if b != CHAMPION else second.slot_weights().get(a, 0) < first.slot_weights().get(a, 0)


@NO_DEADLINE
@given(challenger_weights(min_size=1), st.lists(routing_keys, min_size=1, max_size=30))
def test_a_growing_mirror_share_keeps_every_mirrored_key(weights, sample):
    small = deployment_of(weights, shadow=True)
    grown = {n: bp * 2 for n, bp in weights.items()}  # at most 50 % in all, so 100 % doubled
    large = changed(small, grown)
    for key in sample:
        assert {v.name for v in routed(small).mirrors(key)} <= {v.name for v in routed(large).mirrors(key)}


@st.composite
def configs(draw):
    model_ids = draw(st.lists(st.from_regex(r"mod_[a-z0-9]{4}", fullmatch=True), min_size=1, max_size=5,
                              unique=True))
    registered = draw(st.lists(st.sampled_from(model_ids), unique=True))
    deployments = []
    for i in range(draw(st.integers(0, 4))):
        weights = draw(challenger_weights())
        deployments.append(Deployment(
            f"dep_{i}", "org_1", draw(st.sampled_from(model_ids)),
            tuple(Challenger(n, draw(st.sampled_from(model_ids)), bp, draw(st.booleans()))
                  for n, bp in weights.items()),
            shadow_mode=draw(st.booleans()), cache_version=draw(st.integers(1, 1000))))
    models = {m: Model(m, "127.0.0.1:1", "name-" + m) for m in registered}
    return deployments, models


@NO_DEADLINE
@given(configs())
def test_table_routes_exactly_the_routable_part_of_any_config(config):
    deployments, models = config
    table = build_routing_table(deployments, models, revision=9)
    for d in deployments:
        route = table.lookup(d.deployment_id)
        if d.champion_model_id not in models:
            assert route is None
            assert any(d.deployment_id in p for p in table.problems)
            continue
        expected = {c.id: c.traffic_bp for c in d.active_challengers if c.model_id in models}
        assert {v.name: v.weight_bp for v in route.challengers} == expected
        assert route.cache_version == d.cache_version and route.shadow_mode == d.shadow_mode
        assert route.champion.weight_bp == (BASIS_POINTS if d.shadow_mode else BASIS_POINTS - sum(expected.values()))
        missing = [c.id for c in d.active_challengers if c.model_id not in models]
        assert all(any(cid in p for p in table.problems) for cid in missing)
