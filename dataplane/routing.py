"""The routing core: which variant answers a request, and which challengers get a mirror.

Pure (no gRPC, no etcd) so it can run in-process in a client. A RoutingTable is built
once per config change and never mutated; the router swaps in a new one with a single
assignment, and the hot path only reads (SPEC section 5).

Weights are basis points (1/10,000). In split mode the champion answers 10,000 minus the
active challengers' share, each challenger its share; in shadow mode the champion answers
everything (its weight_bp is 10,000) and each challenger's weight_bp is the share of
requests it gets a mirrored copy of.

Variant choice:
- `x-tsplit-variant` (forced) names "champion" or an active challenger id; any other name
  raises UnknownVariant, which the router answers with INVALID_ARGUMENT.
- Without a routing key: one uniform draw over the total weight (10,000).
- With a routing key: weighted rendezvous hashing. Each variant scores the key with
  ln(u) / weight, u in (0, 1] from a keyed BLAKE2b of the key (the key of the hash is
  derived from the variant's name, so every router computes the same u); the best score
  wins. A key is won by variant i with probability weight_i / total, and since a score
  only depends on its own variant's weight, a key moves from a to b only when a shrank or
  b grew. Between two variants the moved share is exactly the weight change; with more,
  some keys also shift among the others (a challenger grows, the champion shrinks, and a
  key the champion held moves to a third variant that was its runner-up): for one
  challenger's change the moved share is 0-24 % over the change (tests/dataplane/
  test_routing.py). Exactly minimal movement would need per-challenger slots kept in the
  config, which a name-keyed hash cannot give.
- An empty routing key counts as no key.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

from tsplit.resources import BASIS_POINTS, Deployment, Model

CHAMPION = "champion"

_CHOICE_PERSON = b"tsplit.choose"
_MIRROR_PERSON = b"tsplit.mirror"
_U_BITS = 53  # a double holds 53 bits exactly


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

    @property
    def is_champion(self) -> bool:
        return self.name == CHAMPION


def _keyed_hasher(name: str, person: bytes) -> "hashlib.blake2b":
    """A BLAKE2b state keyed by the variant's name; copy() it and feed the routing key."""
    key = hashlib.blake2b(name.encode(), digest_size=32, person=person).digest()
    return hashlib.blake2b(digest_size=8, key=key, person=person)


def _unit(hasher: "hashlib.blake2b", routing_key: bytes) -> float:
    """A stable u in (0, 1] for this variant and key."""
    h = hasher.copy()
    h.update(routing_key)
    return ((int.from_bytes(h.digest(), "little") >> (64 - _U_BITS)) + 1) / (1 << _U_BITS)


@dataclass(frozen=True)
class DeploymentRoute:
    slug: str
    cache_version: int
    shadow_mode: bool
    champion: Variant
    challengers: tuple[Variant, ...] = ()   # active ones only
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    # Precomputed at construction so the hot path does one lookup, draw or hash loop.
    _by_name: Mapping[str, Variant] = field(init=False, compare=False, repr=False)
    _split: tuple[Variant, ...] = field(init=False, compare=False, repr=False)
    _thresholds: tuple[int, ...] = field(init=False, compare=False, repr=False)
    _total: int = field(init=False, compare=False, repr=False)
    _choice_hashers: tuple = field(init=False, compare=False, repr=False)
    _mirror_hashers: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        variants = (self.champion, *self.challengers)
        split = tuple(v for v in variants if v.weight_bp > 0) if not self.shadow_mode else ()
        thresholds, running = [], 0
        for v in split:
            running += v.weight_bp
            thresholds.append(running)
        values = {
            "_by_name": MappingProxyType({v.name: v for v in variants}),
            "_split": split,
            "_thresholds": tuple(thresholds),
            "_total": running,
            "_choice_hashers": tuple((v, _keyed_hasher(v.name, _CHOICE_PERSON), 1.0 / v.weight_bp)
                                     for v in split),
            "_mirror_hashers": tuple((v, _keyed_hasher(v.name, _MIRROR_PERSON), v.weight_bp)
                                     for v in self.challengers if v.weight_bp > 0)
            if self.shadow_mode else (),
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
        if self.shadow_mode:
            if self.champion.weight_bp != BASIS_POINTS:
                raise ValueError(f"deployment {self.slug}: in shadow mode the champion answers everything "
                                 f"(weight_bp {BASIS_POINTS})")
        elif self.champion.weight_bp + sum(c.weight_bp for c in self.challengers) != BASIS_POINTS:
            raise ValueError(f"deployment {self.slug}: in split mode the weights must sum to {BASIS_POINTS}")

    @property
    def variants(self) -> tuple[Variant, ...]:
        return (self.champion, *self.challengers)

    def variant(self, name: str) -> Variant | None:
        return self._by_name.get(name)

    def choose(self, routing_key: bytes | str | None = None, forced: str | None = None) -> Variant:
        """The variant that answers this request (see the module doc)."""
        if forced:
            found = self._by_name.get(forced)
            if found is None:
                raise UnknownVariant(self.slug, forced, self._by_name)
            return found
        if self.shadow_mode:
            return self.champion
        if not routing_key:
            return self._split[bisect_right(self._thresholds, int(self.rng() * self._total))]
        if isinstance(routing_key, str):
            routing_key = routing_key.encode()
        best, best_score = self._split[0], -math.inf
        for variant, hasher, inverse_weight in self._choice_hashers:
            score = math.log(_unit(hasher, routing_key)) * inverse_weight
            if score > best_score:
                best, best_score = variant, score
        return best

    def mirrors(self, routing_key: bytes | str | None = None) -> tuple[Variant, ...]:
        """Shadow mode: the challengers that get a mirrored copy of this request.

        Each with probability weight_bp / 10,000, independently; with a routing key the
        decision is sticky per key (and a key keeps its mirror when the share grows).
        Split mode: ().
        """
        if not self._mirror_hashers:
            return ()
        if not routing_key:
            return tuple(v for v, _, weight in self._mirror_hashers if self.rng() * BASIS_POINTS < weight)
        if isinstance(routing_key, str):
            routing_key = routing_key.encode()
        return tuple(v for v, hasher, weight in self._mirror_hashers
                     if _unit(hasher, routing_key) * BASIS_POINTS <= weight)


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
    return Variant(name, model.model_id, model.endpoint, model.model_name, model.model_version, weight_bp)


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
                            f"registered; its share goes to the champion")
        elif c.traffic_bp <= 0 or c.traffic_bp > BASIS_POINTS:
            problems.append(f"deployment {slug}: challenger {c.id} has a share of {c.traffic_bp} bp; left out")
        elif c.id == CHAMPION or any(c.id == v.name for v in challengers):
            problems.append(f"deployment {slug}: challenger id {c.id!r} is used twice; the second is left out")
        else:
            challengers.append(_variant(c.id, model, c.traffic_bp))
    challenger_bp = sum(v.weight_bp for v in challengers)
    if not deployment.shadow_mode and challenger_bp > BASIS_POINTS:
        return None, problems + [f"deployment {slug}: challengers' shares sum to {challenger_bp} bp, over "
                                 f"{BASIS_POINTS}; the deployment is not routed"]
    champion_bp = BASIS_POINTS if deployment.shadow_mode else BASIS_POINTS - challenger_bp
    route = DeploymentRoute(slug, deployment.cache_version, deployment.shadow_mode,
                            _variant(CHAMPION, champion_model, champion_bp), tuple(challengers), rng)
    return route, problems


def build_routing_table(deployments: Iterable[Deployment], models: Mapping[str, Model], revision: int,
                        rng: Callable[[], float] = random.random) -> RoutingTable:
    """The routing table for a full config (every deployment and model at `revision`).

    A deployment whose champion model is missing is left out; a challenger whose model is
    missing is left out of routing, its share going to the champion. Each is reported in
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
