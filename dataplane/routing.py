"""The routing core: which variant answers a request, and which challenger gets a mirror.

Pure (no gRPC, no etcd) so it can run in-process in a client. A RoutingTable is built
once per config change and never mutated; the router swaps in a new one with a single
assignment, and the hot path only reads (SPEC section 5).

Every deployment's 10,000 slots have an owner (tsplit.allocation: the config's
`allocation`, kept by the control plane so that a change moves only the slots whose owner
must change). A route holds them as `slots`: (start, end, variant index) triples, sorted,
covering 0..10,000, the index into `variants` (0 is the champion); a challenger that is
not routed (its model is missing) leaves its slots to the champion. Weights are basis
points: in split mode each variant's weight_bp is its slot count; in shadow mode the
champion's is 10,000 (it answers everything) and each challenger's is the share of
requests it gets a mirrored copy of, its slot count.

Variant choice:
- `x-tsplit-variant` (forced) names "champion" or an active challenger id; any other name
  raises UnknownVariant, which the router answers with INVALID_ARGUMENT.
- The request's slot: tsplit.allocation.slot_of(slug, routing key), the same in every
  router, the proxyless client and any ops script; without a routing key (or an empty
  one) a uniformly random slot.
- Split mode: the slot's owner answers. Shadow mode: the champion answers, and the slot's
  owner, when it is a challenger, gets a mirrored copy.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

from tsplit.allocation import CHAMPION, SLOTS, Allocation, SlotRange, legacy_allocation, slot_of
from tsplit.resources import BASIS_POINTS, Deployment, Model

SlotTriple = tuple[int, int, int]  # (start inclusive, end exclusive, index into DeploymentRoute.variants)


class UnknownVariant(LookupError):
    """A forced variant (x-tsplit-variant) that the deployment does not route to."""

    def __init__(self, slug: str, name: str, known: Iterable[str]):
        self.slug, self.name = slug, name
        super().__init__(f"x-tsplit-variant {name!r} is not a variant of deployment {slug} "
                         f"(variants: {', '.join(known)})")


@dataclass(frozen=True)
class Variant:
    name: str            # "champion" or the challenger id
    model_id: str
    endpoint: str        # host:port of the model's v2 server
    model_name: str      # the model's name on that server
    model_version: str
    weight_bp: int
    http_endpoint: str = ""  # the model's v2 REST host:port ("" : REST calls are translated to gRPC)

    @property
    def is_champion(self) -> bool:
        return self.name == CHAMPION


def slot_triples(allocation: Allocation, variants: tuple[Variant, ...]) -> tuple[SlotTriple, ...]:
    """An allocation as (start, end, variant index) triples over `variants` (champion
    first); slots of an owner not among them go to the champion (index 0)."""
    index = {v.name: i for i, v in enumerate(variants)}
    triples: list[SlotTriple] = []
    for owner, start, end in allocation:
        i = index.get(owner, 0)
        if triples and triples[-1][2] == i and triples[-1][1] == start:
            triples[-1] = (triples[-1][0], end, i)
        else:
            triples.append((start, end, i))
    return tuple(triples)


@dataclass(frozen=True)
class DeploymentRoute:
    slug: str
    cache_version: int
    shadow_mode: bool
    champion: Variant
    challengers: tuple[Variant, ...] = ()   # active ones only
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    # The slot owners as (start, end, variant index) triples; () lays them out as a config
    # without an allocation (the champion first, then the challengers in order).
    slots: tuple[SlotTriple, ...] = ()
    org_id: str = ""                        # the deployment's org (the native router's --auth jwt)
    # Precomputed at construction so the hot path does one lookup or hash and one bisect.
    _by_name: Mapping[str, Variant] = field(init=False, compare=False, repr=False)
    _starts: tuple[int, ...] = field(init=False, compare=False, repr=False)
    _owners: tuple[Variant, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        variants = (self.champion, *self.challengers)
        self._validate()
        if not self.slots:
            layout = legacy_allocation({c.name: c.weight_bp for c in self.challengers})
            object.__setattr__(self, "slots", slot_triples(layout, variants))
        self._check_slots(variants)
        values = {
            "_by_name": MappingProxyType({v.name: v for v in variants}),
            "_starts": tuple(start for start, _, _ in self.slots),
            "_owners": tuple(variants[i] for _, _, i in self.slots),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _validate(self) -> None:
        if self.champion.name != CHAMPION:
            raise ValueError(f"deployment {self.slug}: the champion variant must be named {CHAMPION!r}")
        names = [c.name for c in self.challengers]
        if CHAMPION in names or len(set(names)) != len(names):
            raise ValueError(f"deployment {self.slug}: challenger names must be unique and not {CHAMPION!r}")
        if any(v.weight_bp < 0 or v.weight_bp > BASIS_POINTS for v in (self.champion, *self.challengers)):
            raise ValueError(f"deployment {self.slug}: every weight_bp must be within 0..{BASIS_POINTS}")
        if sum(c.weight_bp for c in self.challengers) > BASIS_POINTS:
            raise ValueError(f"deployment {self.slug}: the challengers' weights sum to over {BASIS_POINTS}")
        if self.shadow_mode:
            if self.champion.weight_bp != BASIS_POINTS:
                raise ValueError(f"deployment {self.slug}: in shadow mode the champion answers everything "
                                 f"(weight_bp {BASIS_POINTS})")
        elif self.champion.weight_bp + sum(c.weight_bp for c in self.challengers) != BASIS_POINTS:
            raise ValueError(f"deployment {self.slug}: in split mode the weights must sum to {BASIS_POINTS}")

    def _check_slots(self, variants: tuple[Variant, ...]) -> None:
        position, counts = 0, [0] * len(variants)
        for start, end, index in self.slots:
            if start != position or end <= start or not 0 <= index < len(variants):
                raise ValueError(f"deployment {self.slug}: slots must be sorted (start, end, variant index) "
                                 f"triples covering 0..{SLOTS} once; wrong at slot {position}")
            counts[index] += end - start
            position = end
        if position != SLOTS:
            raise ValueError(f"deployment {self.slug}: slots must cover 0..{SLOTS}; they end at {position}")
        for variant, count in zip(variants[1:], counts[1:]):
            if count != variant.weight_bp:
                raise ValueError(f"deployment {self.slug}: challenger {variant.name} owns {count} slots "
                                 f"but its weight_bp is {variant.weight_bp}")

    @property
    def variants(self) -> tuple[Variant, ...]:
        return (self.champion, *self.challengers)

    def variant(self, name: str) -> Variant | None:
        return self._by_name.get(name)

    @property
    def allocation(self) -> Allocation:
        """The slots as ranges named by variant, over this route's variants only (a
        challenger not routed has left its slots to the champion): what a router core
        outside Python (dataplane/native) takes as the route's `allocation`."""
        variants = self.variants
        return tuple(SlotRange(variants[i].name, start, end) for start, end, i in self.slots)

    def slot(self, routing_key: bytes | str | None = None) -> int:
        """The request's slot: the routing key's, or a uniformly random one without a key."""
        if not routing_key:
            return int(self.rng() * SLOTS)
        return slot_of(self.slug, routing_key)

    def owner(self, slot: int) -> Variant:
        """The variant that owns `slot` (0..9,999)."""
        return self._owners[bisect_right(self._starts, slot) - 1]

    def choose(self, routing_key: bytes | str | None = None, forced: str | None = None) -> Variant:
        """The variant that answers this request (see the module doc)."""
        if forced:
            found = self._by_name.get(forced)
            if found is None:
                raise UnknownVariant(self.slug, forced, self._by_name)
            return found
        if self.shadow_mode:
            return self.champion
        return self._owners[bisect_right(self._starts, self.slot(routing_key)) - 1]

    def mirrors(self, routing_key: bytes | str | None = None) -> tuple[Variant, ...]:
        """Shadow mode: the challenger that gets a mirrored copy of this request, the owner of
        its slot when that is a challenger (so each gets its weight_bp / 10,000 of requests,
        sticky per routing key); () otherwise. Split mode: ()."""
        if not self.shadow_mode or not self.challengers:
            return ()
        owner = self._owners[bisect_right(self._starts, self.slot(routing_key)) - 1]
        return () if owner is self.champion else (owner,)


_ROUTE_BUCKETS = 64


class RouteMap(Mapping[str, DeploymentRoute]):
    """An immutable slug -> route map whose updated() copies only what a change touches.

    A table per change used to copy the whole map: 0.65 ms of a change's 0.74 ms on the
    router's loop with 10,000 deployments, in every router at once (BENCHMARKS.md, target
    5). Here the routes are split into buckets by the slug's hash; updated() makes a new
    map that shares every bucket but the changed ones, which it copies (about n/64 routes
    each). Readers never see a bucket change: a bucket, once in a map, is never written.
    """

    __slots__ = ("_buckets", "_len")

    def __init__(self, routes: Mapping[str, DeploymentRoute] | None = None) -> None:
        buckets: list[dict[str, DeploymentRoute]] = [{} for _ in range(_ROUTE_BUCKETS)]
        for slug, route in (routes or {}).items():
            buckets[hash(slug) % _ROUTE_BUCKETS][slug] = route
        self._buckets = tuple(MappingProxyType(b) for b in buckets)
        self._len = sum(len(b) for b in buckets)

    def updated(self, changes: Mapping[str, DeploymentRoute | None]) -> "RouteMap":
        """A new map with each changed slug set to its route, or removed (None)."""
        if not changes:
            return self
        buckets = list(self._buckets)
        copies: dict[int, dict[str, DeploymentRoute]] = {}
        size = self._len
        for slug, route in changes.items():
            index = hash(slug) % _ROUTE_BUCKETS
            bucket = copies.get(index)
            if bucket is None:
                bucket = copies[index] = dict(buckets[index])
            had = slug in bucket
            if route is None:
                if had:
                    del bucket[slug]
                    size -= 1
            else:
                bucket[slug] = route
                size += 0 if had else 1
        for index, bucket in copies.items():
            buckets[index] = MappingProxyType(bucket)
        new = RouteMap.__new__(RouteMap)
        new._buckets, new._len = tuple(buckets), size
        return new

    def get(self, slug, default=None):
        return self._buckets[hash(slug) % _ROUTE_BUCKETS].get(slug, default)

    def __getitem__(self, slug: str) -> DeploymentRoute:
        return self._buckets[hash(slug) % _ROUTE_BUCKETS][slug]

    def __contains__(self, slug: object) -> bool:
        return slug in self._buckets[hash(slug) % _ROUTE_BUCKETS]

    def __iter__(self) -> Iterator[str]:
        for bucket in self._buckets:
            yield from bucket

    def __len__(self) -> int:
        return self._len


@dataclass(frozen=True)
class RoutingTable:
    revision: int                                   # the etcd revision it was built from
    routes: Mapping[str, DeploymentRoute]           # by deployment slug, read-only (a RouteMap)
    problems: tuple[str, ...] = ()                  # what build_routing_table left out, and why

    def __post_init__(self) -> None:
        if not isinstance(self.routes, RouteMap):
            object.__setattr__(self, "routes", RouteMap(self.routes))

    def lookup(self, slug: str) -> DeploymentRoute | None:
        return self.routes.get(slug)


def _variant(name: str, model: Model, weight_bp: int) -> Variant:
    return Variant(name, model.model_id, model.endpoint, model.model_name, model.model_version, weight_bp,
                   model.http_endpoint)


def build_route(deployment: Deployment, models: Mapping[str, Model],
                rng: Callable[[], float] = random.random) -> tuple[DeploymentRoute | None, list[str]]:
    """One deployment's route, and the problems found (a route of None: not routable)."""
    slug = deployment.deployment_id
    champion_model = models.get(deployment.champion_model_id)
    if champion_model is None:
        return None, [f"deployment {slug}: champion model {deployment.champion_model_id} is not registered; "
                      f"the deployment is not routed"]
    problems, challengers = [], []
    for c in deployment.active_challengers:
        model = models.get(c.model_id)
        if model is None:
            problems.append(f"deployment {slug}: challenger {c.id} names model {c.model_id}, which is not "
                            f"registered; its slots go to the champion")
        elif c.traffic_bp <= 0 or c.traffic_bp > BASIS_POINTS:
            problems.append(f"deployment {slug}: challenger {c.id} has a share of {c.traffic_bp} bp; left out")
        elif c.id == CHAMPION or any(c.id == v.name for v in challengers):
            problems.append(f"deployment {slug}: challenger id {c.id!r} is used twice; the second is left out")
        else:
            challengers.append(_variant(c.id, model, c.traffic_bp))
    if not deployment.allocation:
        return None, problems + [f"deployment {slug}: challengers' shares sum to {deployment.challenger_bp} bp, "
                                 f"over {BASIS_POINTS}; the deployment is not routed"]
    challenger_bp = sum(v.weight_bp for v in challengers)
    champion_bp = BASIS_POINTS if deployment.shadow_mode else BASIS_POINTS - challenger_bp
    champion = _variant(CHAMPION, champion_model, champion_bp)
    slots = slot_triples(deployment.allocation, (champion, *challengers))
    route = DeploymentRoute(slug, deployment.cache_version, deployment.shadow_mode, champion, tuple(challengers),
                            rng, slots, org_id=deployment.org_id)
    return route, problems


def build_routing_table(deployments: Iterable[Deployment], models: Mapping[str, Model], revision: int,
                        rng: Callable[[], float] = random.random) -> RoutingTable:
    """The routing table for a full config (every deployment and model at `revision`).

    A deployment whose champion model is missing is left out; a challenger whose model is
    missing is left out of routing, its slots going to the champion. Each is reported in
    RoutingTable.problems (the caller logs them). `rng` is a uniform [0, 1) source (tests
    pass a seeded one).
    """
    routes: dict[str, DeploymentRoute] = {}
    problems: list[str] = []
    for deployment in deployments:
        route, found = build_route(deployment, models, rng)
        problems.extend(found)
        if route is not None:
            routes[route.slug] = route
    return RoutingTable(revision, routes, tuple(problems))
