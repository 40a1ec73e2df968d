"""Shadow mode: copies of a request to challengers, in the background, compared with the
champion's answer once both are in.

The champion's answer never waits for a mirror: each copy is its own task, started after
the champion's call is on its way. Copies in flight are bounded per router; past the bound
a copy is not sent and counts as dropped (a copy holds its slot until its pair is scored,
so the bound also bounds comparisons waiting). Answers are parsed and compared only when
both are in; large pairs in a separate process, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
import time
from typing import Awaitable, Callable, Iterable

import grpc

from dataplane import oip
from dataplane.compare import compare_responses
from dataplane.routing import Variant
from dataplane.stats import RouterStats

log = logging.getLogger(__name__)

# (endpoint, request bytes, timeout s) -> the backend's raw answer; raises grpc.aio.AioRpcError.
Forward = Callable[[str, bytes, float | None], Awaitable[bytes]]
# (variant, the client's request bytes) -> the bytes that variant's backend gets.
Rewrite = Callable[[Variant, bytes], bytes]


# Pairs larger than this are compared in a separate process: the comparison is pure Python
# (0.3 to 1.5 ms per 1,000 output values here) and would otherwise hold the event loop, and
# with it every champion answer, for as long as it runs. Up to about 1,000 values the
# hand-off would cost about as much as comparing inline.
INLINE_COMPARE_BYTES = 4 * 1024


def compare_raw(champion: bytes, challenger: bytes) -> tuple[bool, int, int, float, int]:
    """Parse and compare two raw ModelInferResponses (runs in the comparison process for
    large answers, so it takes and returns plain values)."""
    # oip's private pool, not the generated module: see dataplane/oip.py (proxyless mode).
    parse = oip.ModelInferResponse.FromString
    c = compare_responses(parse(champion), parse(challenger))
    return c.exact_match, c.label_agree, c.label_total, c.abs_diff_sum, c.abs_diff_count


_PAIR_HEADER = struct.Struct("<QQ")


class ComparisonProcess:
    """A child process (`python -m dataplane.mirror`) that compares pairs sent on its stdin,
    one at a time, started on first use and again after it dies. A plain subprocess rather
    than multiprocessing: that would re-import the embedding program's __main__ (fork is
    unsafe with grpc's threads)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def compare(self, ours: bytes, theirs: bytes) -> tuple[bool, int, int, float, int]:
        async with self._lock:
            process = self._process
            if process is None or process.returncode is not None:
                process = self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "dataplane.mirror",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            try:
                process.stdin.write(_PAIR_HEADER.pack(len(ours), len(theirs)))
                process.stdin.write(ours)
                process.stdin.write(theirs)
                await process.stdin.drain()
                line = await process.stdout.readline()
            except (ConnectionError, BrokenPipeError):
                line = b""
            if not line:
                self._process = None
                if process.returncode is None:
                    process.kill()
                raise RuntimeError("the comparison process exited")
            answer = json.loads(line)
            if isinstance(answer, dict):
                raise RuntimeError(f"comparison failed: {answer.get('error')}")
            exact, agree, total, diff_sum, diff_count = answer
            return bool(exact), int(agree), int(total), float(diff_sum), int(diff_count)

    async def close(self, timeout_s: float = 2.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


def serve_comparisons(stdin=None, stdout=None) -> None:
    """The comparison process: read pairs until stdin closes, answer one JSON line each."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    while True:
        header = stdin.read(_PAIR_HEADER.size)
        if len(header) < _PAIR_HEADER.size:
            return
        ours_len, theirs_len = _PAIR_HEADER.unpack(header)
        ours, theirs = stdin.read(ours_len), stdin.read(theirs_len)
        try:
            answer: object = list(compare_raw(ours, theirs))
        except Exception as err:  # a pair that does not parse: the router logs it
            answer = {"error": f"{type(err).__name__}: {err}"}
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()


class ChampionAnswer:
    """The champion's side of the pairs of one request, set once."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def set(self, raw: bytes | None) -> None:
        """The champion's raw answer, or None when it failed (then nothing is compared)."""
        if not self._future.done():
            self._future.set_result(raw)

    async def get(self) -> bytes | None:
        return await self._future


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
        self._comparer = ComparisonProcess()
        # Where pairs were compared (metrics, tests).
        self.compared_inline = 0
        self.compared_in_process = 0

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
            ours = await champion.get()
            if ours is None:
                return
            row.compared_pair(*await self._compare(ours, raw))
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

    async def _compare(self, ours: bytes, theirs: bytes) -> tuple[bool, int, int, float, int]:
        if len(ours) <= INLINE_COMPARE_BYTES and len(theirs) <= INLINE_COMPARE_BYTES:
            self.compared_inline += 1
            return compare_raw(ours, theirs)
        result = await self._comparer.compare(ours, theirs)
        self.compared_in_process += 1
        return result

    async def stop(self, grace_s: float) -> None:
        """Let copies in flight finish for up to grace_s, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._comparer.close()


if __name__ == "__main__":
    serve_comparisons()


class ShadowFromThread:
    """A request's mirrors for a caller on another thread (the sync router's handler threads,
    the proxyless sync channel): started, then given the champion's answer, on the loop.

    `call` schedules fn(*args) on the loop thread-safely; callbacks run in the order they
    were made, so the copies are started before the answer reaches them."""

    __slots__ = ("_call", "_mirrors", "_champion")

    def __init__(self, call: Callable[..., None], mirrors: "MirrorDispatcher", slug: str,
                 variants: Iterable[Variant], request: bytes) -> None:
        self._call, self._mirrors, self._champion = call, mirrors, None
        call(self._start, slug, tuple(variants), request)

    def _start(self, slug: str, variants: tuple[Variant, ...], request: bytes) -> None:
        self._champion = self._mirrors.start(slug, variants, request)

    def _set(self, raw: bytes | None) -> None:
        if self._champion is not None:
            self._champion.set(raw)

    def set(self, raw: bytes | None) -> None:
        try:
            self._call(self._set, raw)
        except RuntimeError:  # the loop closed meanwhile (shutdown): no pair to score
            pass
