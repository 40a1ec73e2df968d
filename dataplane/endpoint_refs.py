"""Which backend endpoints the routing table uses, counted per route, updated per change.

Rebuilding the set of endpoints over every route on each config change was a quarter of a
change's time with 10,000 deployments (BENCHMARKS.md, target 5); a change now adjusts the
counts of the routes it replaced.
"""

from __future__ import annotations

from typing import Iterable

from dataplane.routing import DeploymentRoute


def _route_endpoints(route: DeploymentRoute | None) -> Iterable[str]:
    if route is None:
        return ()
    return (route.champion.endpoint, *(v.endpoint for v in route.challengers))


class EndpointRefs:
    """endpoint -> number of variants (over all routes) that send to it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def replace(self, old: DeploymentRoute | None, new: DeploymentRoute | None) -> set[str]:
        """A route changed from old to new (None: absent); the endpoints no longer used."""
        for endpoint in _route_endpoints(new):
            self.counts[endpoint] = self.counts.get(endpoint, 0) + 1
        unused = set()
        for endpoint in _route_endpoints(old):
            left = self.counts[endpoint] - 1
            if left:
                self.counts[endpoint] = left
            else:
                del self.counts[endpoint]
                unused.add(endpoint)
        return unused

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self.counts
