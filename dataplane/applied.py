"""The cache_version applied per deployment, kept incrementally, with its JSON cached.

With 10,000 deployments, re-encoding the whole slug -> version map for every config change
cost most of a change's time on the router's loop (BENCHMARKS.md, target 5). Here the map
is split into buckets by the slug's hash; each bucket caches its JSON text and a change
re-encodes only its own bucket, so to_json() joins a few dozen cached strings.

Written from one thread (the config sync's event loop); to_dict() may be called from any
thread (a dict copy is atomic under the GIL).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import orjson

_BUCKETS = 64


def _entry(slug: str, version: int) -> str:
    return f"{orjson.dumps(slug).decode()}:{int(version)}"


class AppliedVersions(Mapping[str, int]):
    """slug -> cache_version, a read-only Mapping to its readers; set()/discard() update it."""

    def __init__(self, buckets: int = _BUCKETS) -> None:
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self._versions: dict[str, int] = {}
        self._buckets: list[dict[str, str]] = [{} for _ in range(buckets)]
        self._bucket_json: list[str | None] = [""] * buckets
        self._json: str | None = "{}"

    def _bucket(self, slug: str) -> int:
        return hash(slug) % len(self._buckets)

    def set(self, slug: str, version: int) -> None:
        if self._versions.get(slug) == version:
            return
        self._versions[slug] = version
        index = self._bucket(slug)
        self._buckets[index][slug] = _entry(slug, version)
        self._bucket_json[index] = None
        self._json = None

    def discard(self, slug: str) -> None:
        if self._versions.pop(slug, None) is None:
            return
        index = self._bucket(slug)
        del self._buckets[index][slug]
        self._bucket_json[index] = None
        self._json = None

    def clear(self) -> None:
        for slug in list(self._versions):
            self.discard(slug)

    def to_json(self) -> str:
        """The map as a compact JSON object (keys in no particular order)."""
        if self._json is None:
            parts = []
            for index, cached in enumerate(self._bucket_json):
                if cached is None:
                    cached = self._bucket_json[index] = ",".join(self._buckets[index].values())
                if cached:
                    parts.append(cached)
            self._json = "{" + ",".join(parts) + "}"
        return self._json

    def to_dict(self) -> dict[str, int]:
        return dict(self._versions)

    def __getitem__(self, slug: str) -> int:
        return self._versions[slug]

    def __contains__(self, slug: object) -> bool:
        return slug in self._versions

    def __iter__(self) -> Iterator[str]:
        return iter(self._versions)

    def __len__(self) -> int:
        return len(self._versions)
