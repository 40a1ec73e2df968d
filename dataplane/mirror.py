"""Shadow mode: copies of a request to challengers, in the background, compared with the
champion's answer once both are in.

The champion's answer never waits for a mirror: each copy is its own task, started after
the champion's call is on its way. Copies in flight are bounded per router; past the bound
a copy is not sent and counts as dropped. Answers are parsed and compared only when both
are in, never on the champion's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable

import grpc

from dataplane.compare import compare_responses
from dataplane.routing import Variant
from dataplane.stats import RouterStats
from tsplit.inference import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

# (endpoint, request bytes, timeout s) -> the backend's raw answer; raises grpc.aio.AioRpcError.
Forward = Callable[[str, bytes, float | None], Awaitable[bytes]]
# (variant, the client's request bytes) -> the bytes that variant's backend gets.
Rewrite = Callable[[Variant, bytes], bytes]


class ChampionAnswer:
    """The champion's side of the pairs of one request: set once, parsed at most once."""

    __slots__ = ("_future", "_parsed")

    def __init__(self) -> None:
        self._future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._parsed: pb.ModelInferResponse | None = None

    def set(self, raw: bytes | None) -> None:
        """The champion's raw answer, or None when it failed (then nothing is compared)."""
        if not self._future.done():
            self._future.set_result(raw)

    async def parsed(self) -> pb.ModelInferResponse | None:
        raw = await self._future
        if raw is None:
            return None
        if self._parsed is None:
            self._parsed = pb.ModelInferResponse.FromString(raw)
        return self._parsed


class MirrorDispatcher:
    def __init__(self, forward: Forward, rewrite: Rewrite, stats: RouterStats,
                 max_inflight: int, timeout_s: float) -> None:
        self._forward = forward
        self._rewrite = rewrite
        self._stats = stats
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.inflight = 0
        self._tasks: set[asyncio.Task] = set()
        self._compare_failure_logged = False

    def start(self, slug: str, variants: Iterable[Variant], request: bytes) -> ChampionAnswer | None:
        """Send a copy of request to each variant that fits under the bound. The caller
        must .set() the returned ChampionAnswer (None when no copy was sent)."""
        champion: ChampionAnswer | None = None
        for variant in variants:
            row = self._stats.variant(slug, variant.name, variant.model_id)
            if self.inflight >= self.max_inflight:
                row.mirror_dropped += 1
                continue
            if champion is None:
                champion = ChampionAnswer()
            self.inflight += 1
            row.mirrored += 1
            task = asyncio.get_running_loop().create_task(self._mirror(slug, variant, request, champion))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return champion

    async def _mirror(self, slug: str, variant: Variant, request: bytes, champion: ChampionAnswer) -> None:
        row = self._stats.variant(slug, variant.name, variant.model_id)
        try:
            started = time.perf_counter()
            try:
                raw = await self._forward(variant.endpoint, self._rewrite(variant, request), self.timeout_s)
            except grpc.aio.AioRpcError:
                raw = None
            row.mirror_answered((time.perf_counter() - started) * 1000.0, ok=raw is not None)
            if raw is None:
                return
            theirs_parsed = pb.ModelInferResponse.FromString(raw)
            ours = await champion.parsed()
            if ours is None:
                return
            c = compare_responses(ours, theirs_parsed)
            row.compared_pair(c.exact_match, c.label_agree, c.label_total, c.abs_diff_sum, c.abs_diff_count)
        except asyncio.CancelledError:
            raise
        except Exception:
            # An answer that does not parse, or a comparison bug: the pair is not scored.
            if not self._compare_failure_logged:
                self._compare_failure_logged = True
                log.warning("could not compare a shadow pair of %s/%s (logged once)", slug, variant.name,
                            exc_info=True)
        finally:
            self.inflight -= 1

    async def stop(self, grace_s: float) -> None:
        """Let copies in flight finish for up to grace_s, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
