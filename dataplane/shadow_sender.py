"""The shadow sender process (`python -m dataplane.shadow_sender`), started by the router's
MirrorProcess (dataplane.shadow_process): reads frames (a request, its champion's answer
and the variants to copy it to) on stdin, sends each copy with its deadline, compares the
pair once the copy answered, and writes the counts, summed per variant, as one JSON line
on stdout every REPORT_EVERY_S. Runs at a lower CPU priority than the router. On end of
input it lets the copies in flight finish (up to their deadline), reports and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import grpc

from dataplane.backends import BACKEND_CHANNEL_OPTIONS, Backend
from dataplane.mirror import compare_raw
from dataplane.shadow_process import FRAME_HEADER, NO_ANSWER, decode_meta
from dataplane.wire import model_ref_suffix
from tsplit.status import latency_bucket

log = logging.getLogger("tsplit.shadow_sender")

REPORT_EVERY_S = 0.02
MAX_CHANNELS = 256    # channels kept open, least recently used closed past it


@dataclass(frozen=True)
class SenderSettings:
    timeout_s: float = 10.0
    nice: int = 19


class Totals:
    """One variant's counts since the last report (the order of a report row)."""

    __slots__ = ("finished", "errors", "latency_ms", "compared", "exact", "agree", "total", "diff_sum", "diff_count",
                 "buckets")

    def __init__(self) -> None:
        self.finished = self.errors = self.compared = self.exact = self.agree = self.total = self.diff_count = 0
        self.latency_ms = self.diff_sum = 0.0
        self.buckets: dict[int, int] = {}  # latency bucket index (tsplit.status) -> copies

    def row(self) -> list:
        return [self.finished, self.errors, self.latency_ms, self.compared, self.exact, self.agree, self.total,
                self.diff_sum, self.diff_count, sorted(self.buckets.items())]


class Sender:
    def __init__(self, settings: SenderSettings, out) -> None:
        self._settings = settings
        self._out = out
        self._channels: collections.OrderedDict[str, Backend] = collections.OrderedDict()
        self._totals: dict[tuple[str, str, str], Totals] = {}
        self._tasks: set[asyncio.Task] = set()
        self._failure_logged = False

    def _backend(self, endpoint: str) -> Backend:
        backend = self._channels.get(endpoint)
        if backend is None:
            backend = self._channels[endpoint] = Backend(endpoint, BACKEND_CHANNEL_OPTIONS)
            if len(self._channels) > MAX_CHANNELS:
                _, old = self._channels.popitem(last=False)
                self._spawn(old.channel.close(self._settings.timeout_s))
        else:
            self._channels.move_to_end(endpoint)
        return backend

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def accept(self, meta: bytes, request: bytes, answer: bytes | None) -> None:
        slug, variants = decode_meta(meta)
        for name, model_id, endpoint, model_name, model_version in variants:
            self._spawn(self._mirror(slug, name, model_id, endpoint,
                                     request + model_ref_suffix(model_name, model_version), answer))

    async def _mirror(self, slug: str, name: str, model_id: str, endpoint: str, request: bytes,
                      answer: bytes | None) -> None:
        started = time.perf_counter()
        try:
            raw = await self._backend(endpoint).call_infer(request, self._settings.timeout_s)
        except grpc.aio.AioRpcError:
            raw = None
        # Looked up after the call: a report in between took the counts so far.
        totals = self._totals.get((slug, name, model_id))
        if totals is None:
            totals = self._totals[(slug, name, model_id)] = Totals()
        latency_ms = (time.perf_counter() - started) * 1000.0
        totals.latency_ms += latency_ms
        bucket = latency_bucket(latency_ms)
        totals.buckets[bucket] = totals.buckets.get(bucket, 0) + 1
        if raw is None:
            totals.errors += 1
        elif answer is not None:
            try:
                exact, agree, total, diff_sum, diff_count = compare_raw(answer, raw)
            except Exception:  # an answer that does not parse, or a comparison bug: not scored
                if not self._failure_logged:
                    self._failure_logged = True
                    log.warning("could not compare a shadow pair of %s/%s (logged once)", slug, name, exc_info=True)
            else:
                totals.compared += 1
                totals.exact += int(exact)
                totals.agree += agree
                totals.total += total
                totals.diff_sum += diff_sum
                totals.diff_count += diff_count
        totals.finished += 1

    def report(self) -> None:
        if not self._totals:
            return
        totals, self._totals = self._totals, {}
        rows = [[slug, name, model_id, *t.row()] for (slug, name, model_id), t in totals.items()]
        self._out.write(_json_line({"rows": rows}))
        self._out.flush()

    async def report_regularly(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            self.report()

    async def drain(self) -> None:
        """End of input: the copies in flight finish (each has its deadline)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._settings.timeout_s + 1.0)
        self.report()
        await asyncio.gather(*(backend.channel.close(None) for backend in self._channels.values()),
                             return_exceptions=True)


def _json_line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def serve(settings: SenderSettings, stdin=None, stdout=None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin or sys.stdin)
    sender = Sender(settings, stdout or sys.stdout.buffer)
    reporter = loop.create_task(sender.report_regularly())
    try:
        while True:
            try:
                meta_len, request_len, answer_len = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
                meta = await reader.readexactly(meta_len)
                request = await reader.readexactly(request_len)
                answer = None if answer_len == NO_ANSWER else await reader.readexactly(answer_len)
            except asyncio.IncompleteReadError:
                break
            sender.accept(meta, request, answer)
    finally:
        reporter.cancel()
        await sender.drain()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane.shadow_sender")
    parser.add_argument("--timeout", type=float, default=SenderSettings.timeout_s)
    parser.add_argument("--nice", type=int, default=SenderSettings.nice)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group: the router stops this process by closing
    # its input, after the copies in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.nice:
        os.nice(args.nice)
    settings = SenderSettings(args.timeout, args.nice)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
