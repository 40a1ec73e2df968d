"""dataplane.routing.RouteMap: the immutable, bucketed slug -> route map a routing table
holds. Against a plain dict model: same contents after any sequence of updates, and every
earlier map unchanged (a table in a reader's hands never changes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.routing import RouteMap, RoutingTable

SLUGS = st.sampled_from([f"dep_{i:03d}" for i in range(300)])
# A route stands in as any object: the map never looks inside one.
UPDATES = st.lists(st.dictionaries(SLUGS, st.one_of(st.none(), st.integers(0, 9))), max_size=12)


def apply(model: dict, changes: dict) -> dict:
    model = dict(model)
    for slug, route in changes.items():
        if route is None:
            model.pop(slug, None)
        else:
            model[slug] = route
    return model


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(SLUGS, st.integers(0, 9), max_size=200), UPDATES)
def test_updates_match_a_dict_and_leave_earlier_maps_alone(initial, updates):
    maps, models = [RouteMap(initial)], [dict(initial)]
    for changes in updates:
        maps.append(maps[-1].updated(changes))
        models.append(apply(models[-1], changes))
    for route_map, model in zip(maps, models):
        assert dict(route_map) == model and len(route_map) == len(model)
        assert sorted(route_map) == sorted(model)
        for slug in ("dep_000", "dep_150", "dep_299", "dep_missing"):
            assert route_map.get(slug) == model.get(slug) and (slug in route_map) == (slug in model)


def test_an_empty_update_is_the_same_map_and_missing_keys_raise():
    route_map = RouteMap({"dep_a": 1})
    assert route_map.updated({}) is route_map
    with pytest.raises(KeyError):
        route_map["dep_b"]
    assert route_map.updated({"dep_b": None}) == {"dep_a": 1}


def test_an_update_copies_only_the_buckets_it_touches():
    route_map = RouteMap({f"dep_{i:05d}": i for i in range(10_000)})
    after = route_map.updated({"dep_00042": -1})
    shared = sum(a is b for a, b in zip(route_map._buckets, after._buckets))
    assert shared == len(route_map._buckets) - 1
    assert after["dep_00042"] == -1 and route_map["dep_00042"] == 42 and len(after) == 10_000


def test_a_table_wraps_a_plain_mapping_and_keeps_a_route_map_as_is():
    route_map = RouteMap({"dep_a": 1})
    assert RoutingTable(1, route_map).routes is route_map
    table = RoutingTable(1, {"dep_a": 1})
    assert isinstance(table.routes, RouteMap) and table.lookup("dep_a") == 1 and table.lookup("dep_b") is None
    with pytest.raises(TypeError):
        table.routes._buckets[0]["dep_x"] = 2  # type: ignore[index]
