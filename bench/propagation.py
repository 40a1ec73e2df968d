"""Target 3: from a PATCH's 200 to every router serving the new split.

Two clocks, one figure each, per change (the change's figure is its slowest router's):

- The routers' own: each router (started with --log-level DEBUG) logs when it swapped in
  the table of each etcd revision, in perf_counter time (CLOCK_MONOTONIC, the same clock in
  every process on the machine). From that moment every request it reads gets the new
  split. The figure: swap time minus the 200's arrival, 0 when the router swapped first.
  This is the target's figure, timed like etcd's own put-to-watch figure it is compared
  with (an event delivered to a process, with no request round trip on top).
- A client's: from the 200 on, the harness probes every router with ModelInfer (one in
  flight per router) until each answers with tsplit-cache-version >= the change's version;
  the arrival of that answer. It is later than the swap by up to a probe round trip
  (4-6 ms at the median on 2 shared cores with four routers probed at once).

The probes also check the routers' timestamps: a probe sent after a router's logged swap
must carry the new version, and one answered before it must not; every exception is
counted (`contradictions`, expected 0).

Why two: probing only from the 200 measured a probe round trip more than the propagation.
Router timestamps showed every router had swapped before the 200 reached the harness in
nine changes out of ten (BENCHMARKS.md); probing continuously through the change, to catch
those, loaded the 2 cores so much that the round trip, and with it the figure, doubled.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from bench import rest
from bench.frames import MODEL_INFER_PATH, infer_request
from tsplit.etcd import Etcd
from tsplit.layout import Layout
from tsplit.resources import Deployment, dumps, loads

CACHE_VERSION_HEADER = "tsplit-cache-version"
ROUTER_FLAGS = ("--log-level", "DEBUG")   # the routers' swap timestamps are DEBUG lines
_SWAP_LINE = re.compile(r"config revision (\d+): batch read at ([\d.]+), swapped at ([\d.]+)")


def _identity(raw: bytes) -> bytes:
    return raw


def _cache_version(metadata) -> int:
    for key, value in metadata or ():
        if key == CACHE_VERSION_HEADER:
            return int(value)
    return 0


@dataclass(frozen=True)
class Answer:
    """One probe: perf_counter times it was sent and answered, the version it carried
    (0: an error, or no version header)."""
    sent: float
    answered: float
    version: int


@dataclass(frozen=True)
class Swap:
    """A router's table swap, from its log: the etcd revision, when its watch batch was
    read and when the new table was in place (perf_counter times)."""
    revision: int
    read: float
    swapped: float


def parse_swaps(text: str) -> list[Swap]:
    """The swaps a router logged, in log order."""
    return [Swap(int(m[1]), float(m[2]), float(m[3])) for m in _SWAP_LINE.finditer(text)]


def first_swap_after(swaps: list[Swap], moment: float) -> Swap | None:
    """The first swap whose watch batch was read after `moment` (the change was written)."""
    for swap in swaps:
        if swap.read >= moment:
            return swap
    return None


def contradictions(answers: list[Answer], version: int, swapped: float) -> int:
    """Probes that disagree with a logged swap to `version` at `swapped`: sent after it
    but answered with an older version, or answered before it with this one."""
    return sum(1 for a in answers if a.version and ((a.sent > swapped and a.version < version)
                                                    or (a.answered < swapped and a.version >= version)))


async def _probe_until(call, request: bytes, version: int, deadline: float) -> list[Answer]:
    """Probe one router until it answers with version or newer; every answer."""
    answers: list[Answer] = []
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        invocation = call(request, timeout=1.0)
        try:
            await invocation
            seen = _cache_version(await invocation.initial_metadata())
        except grpc.aio.AioRpcError:
            answers.append(Answer(sent, time.perf_counter(), 0))
            await asyncio.sleep(0.001)
            continue
        answers.append(Answer(sent, time.perf_counter(), seen))
        if seen >= version:
            return answers
    raise TimeoutError(f"a router did not serve cache_version {version} in time")


class Probes:
    """One channel per router and a ModelInfer call that reads the cache version."""

    def __init__(self, routers: list[str], slug: str):
        self.channels = [grpc.aio.insecure_channel(a) for a in routers]
        self.request = infer_request(slug).SerializeToString()
        self.calls = [c.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)
                      for c in self.channels]

    async def until_serving(self, version: int, deadline: float) -> list[list[Answer]]:
        """Each router's answers, probed from now until it answered with version or newer."""
        return list(await asyncio.gather(*(_probe_until(call, self.request, version, deadline)
                                           for call in self.calls)))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@dataclass(frozen=True)
class Change:
    """One change as the harness saw it: written at `written` (PATCH or put sent), the
    reference moment (the 200, or the put sent), the version, and each router's answers."""
    written: float
    reference: float
    version: int
    answers: tuple[list[Answer], ...]


@dataclass
class Timings:
    """ms from each change's reference moment to its slowest router: `swapped_ms` (the
    routers' logged swaps, the target's figure) and `answered_ms` (a client's first
    answer with the new version); the probes' round trips; contradictions between the two
    clocks; changes whose swap a router did not log."""
    swapped_ms: list[float] = field(default_factory=list)
    answered_ms: list[float] = field(default_factory=list)
    probe_rtt_ms: list[float] = field(default_factory=list)
    contradictions: int = 0
    unlogged: int = 0

    def to_json(self, percentile) -> dict:
        def summary(values: list[float]) -> dict:
            return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                    "max_ms": max(values) if values else None}
        return {"changes": len(self.answered_ms), "router_swapped": summary(self.swapped_ms),
                "client_answered": summary(self.answered_ms), "probe_round_trip": summary(self.probe_rtt_ms),
                "contradictions": self.contradictions, "unlogged_swaps": self.unlogged}


def timings(changes: list[Change], router_logs: list[str]) -> Timings:
    """Both figures of every change, from the harness's records and the routers' logs."""
    swaps = [parse_swaps(text) for text in router_logs]
    result = Timings()
    for change in changes:
        result.answered_ms.append(max(0.0, (max(a[-1].answered for a in change.answers) - change.reference) * 1000))
        result.probe_rtt_ms += [(a.answered - a.sent) * 1000 for answers in change.answers for a in answers]
        swapped = [first_swap_after(router_swaps, change.written) for router_swaps in swaps]
        if any(s is None for s in swapped) or len(swapped) != len(change.answers):
            result.unlogged += 1
            continue
        result.swapped_ms.append(max(0.0, (max(s.swapped for s in swapped) - change.reference) * 1000))
        result.contradictions += sum(contradictions(answers, change.version, s.swapped)
                                     for answers, s in zip(change.answers, swapped))
    return result


def read_logs(paths: list[Path]) -> list[str]:
    return [path.read_text(errors="replace") for path in paths]


async def setup_deployment(client: httpx.AsyncClient, champion: str, challenger: str) -> tuple[str, str]:
    """A deployment with one 10 % challenger, made through the gateway; (slug, challenger id)."""
    champ = await rest.register_model(client, champion, "linear-a")
    chall = await rest.register_model(client, challenger, "linear-b")
    slug = await rest.create_deployment(client, champ)
    answer = await rest.patch_traffic(client, slug, {"action": "add_challenger", "model_id": chall, "traffic_pct": 10})
    return slug, answer["challenger"]["id"]


async def measure_etcd_put(etcd: Etcd, layout: Layout, routers: list[str], slug: str, challenger_id: str,
                           changes: int, pause_s: float = 0.02, timeout_s: float = 10.0) -> list[Change]:
    """The router half alone: the deployment's next version put straight into etcd (what
    the control plane's transaction writes); the reference moment is the put being sent."""
    probes = Probes(routers, slug)
    done = []
    try:
        for i in range(changes):
            current = Deployment.from_json(loads((await etcd.get(layout.deployment(slug))).value))
            challengers = tuple(
                c if c.id != challenger_id else type(c)(c.id, c.model_id, 2000 if i % 2 == 0 else 1000, c.is_active)
                for c in current.challengers)
            nxt = current.with_challengers(challengers, cache_version=current.cache_version + 1)
            sent = time.perf_counter()
            await etcd.put(layout.deployment(slug), dumps(nxt.to_json()))
            answers = await probes.until_serving(nxt.cache_version, sent + timeout_s)
            done.append(Change(sent, sent, nxt.cache_version, tuple(answers)))
            await asyncio.sleep(pause_s)
    finally:
        await probes.close()
    return done


async def measure(client: httpx.AsyncClient, routers: list[str], slug: str, challenger_id: str,
                  changes: int, pause_s: float = 0.02, timeout_s: float = 10.0) -> list[Change]:
    """`changes` PATCHes through the gateway; the reference moment is each one's 200."""
    probes = Probes(routers, slug)
    done = []
    try:
        for i in range(changes):
            pct = 20 if i % 2 == 0 else 10
            sent = time.perf_counter()
            answer = await rest.patch_traffic(
                client, slug, {"action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct})
            ok_at = time.perf_counter()
            answers = await probes.until_serving(answer["cache_version"], ok_at + timeout_s)
            done.append(Change(sent, ok_at, answer["cache_version"], tuple(answers)))
            await asyncio.sleep(pause_s)
    finally:
        await probes.close()
    return done
