"""Shadow mode in a separate process: the router hands each mirrored request, with the
champion's answer, to a shadow sender process (dataplane.shadow_sender) in one pipe write;
that process sends the copies, compares the pairs and reports aggregated counts back.

Why a process: in the router, a mirror through grpc.aio cost about as much CPU and GIL time
as the champion's own proxied call (~0.7 ms per copy, BENCHMARKS.md), so with mirrors on
the champion's answers waited for the GIL and for a core. The sender runs at a lower CPU
priority (nice 19), so on busy cores the champion's process runs first; the copies are
background work with their own deadline. The price: on saturated cores copies wait for a
core, their measured latency includes that wait, and past the bound they are dropped.

What mirrors promise is unchanged (README, "Routing"): the champion's answer never waits
for a copy; copies in flight are bounded per router (`max_inflight`, a copy holds its slot
until its pair is scored) and past the bound a copy is not sent and counts as dropped, as
does a copy the pipe has no room for; `mirrored`, `mirror_dropped` are counted here at the
hand-off, the rest (`mirror_errors`, mirror latency, comparisons) as the sender reports
them. If the sender dies, its copies in flight are forgotten (not scored) and a new one is
started on the next copy, at most once a second.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import json
import logging
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Iterable, Sequence

from dataplane.routing import Variant
from dataplane.stats import RouterStats

log = logging.getLogger(__name__)

# A frame: header (meta, request and answer lengths; answer -1: the champion failed),
# then the three parts. meta is JSON: [slug, [[name, model_id, endpoint, model_name,
# model_version], ...]].
FRAME_HEADER = struct.Struct("<IIi")
NO_ANSWER = -1
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032   # Linux fcntl
_COUNT = struct.Struct("i")
PIPE_BYTES = 1 << 20   # room for ~1,000 small requests before copies are dropped
# The sender's CPU priority: the lowest. At 600 req/s with 2 mirrors the champion's p99 was
# 1.08x of shadow off with nice 19, 1.42x with nice 10 (bench/shadow_probe, same run).
SENDER_NICE = 19
RESPAWN_EVERY_S = 1.0
_WRITE_REST_S = 5.0    # a frame half written must be finished within this, or the sender is replaced


@functools.lru_cache(maxsize=4096)
def _meta(slug: str, variants: tuple[Variant, ...]) -> bytes:
    return json.dumps([slug, [[v.name, v.model_id, v.endpoint, v.model_name, v.model_version]
                              for v in variants]], separators=(",", ":")).encode()


def encode_frame(slug: str, variants: tuple[Variant, ...], request: bytes, answer: bytes | None) -> bytes:
    meta = _meta(slug, variants)
    header = FRAME_HEADER.pack(len(meta), len(request), NO_ANSWER if answer is None else len(answer))
    return b"".join((header, meta, request, answer or b""))


def decode_meta(meta: bytes) -> tuple[str, list[tuple[str, str, str, str, str]]]:
    slug, variants = json.loads(meta)
    return slug, [tuple(v) for v in variants]


class _Pair:
    """A request's copies waiting for the champion's answer (the ShadowHandle)."""

    __slots__ = ("_owner", "_slug", "_variants", "_request")

    def __init__(self, owner: "MirrorProcess", slug: str, variants: tuple[Variant, ...], request: bytes) -> None:
        self._owner, self._slug, self._variants, self._request = owner, slug, variants, request

    def set(self, raw: bytes | None) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.hand_off(self._slug, self._variants, self._request, raw)


class MirrorProcess:
    """The router's side: start() on the champion's path (any thread), reports applied to
    `stats` on `loop` (the thread that owns the counters)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: RouterStats, max_inflight: int,
                 timeout_s: float, nice: int | None = None) -> None:
        self._loop, self._stats = loop, stats
        self.max_inflight, self.timeout_s = max_inflight, timeout_s
        self._nice = SENDER_NICE if nice is None else nice
        self.inflight = 0
        self.compared_in_process = 0
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._pipe_bytes = 0
        # (slug, variant, model_id) -> [its counters, its copies in flight]
        self._rows: dict[tuple[str, str, str], list] = {}
        self._spawned_at = float("-inf")
        self._report_buffer = b""
        self._stopped = False

    @property
    def sender_pid(self) -> int | None:
        """The shadow sender's pid while it runs (tests, diagnostics)."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    # ---- the champion's path ----------------------------------------------------------

    def start(self, slug: str, variants: Sequence[Variant], request: bytes) -> _Pair | None:
        """The copies of request for variants, handed off once the champion answered
        (the returned handle's .set()); None when there are none."""
        return _Pair(self, slug, tuple(variants), request) if variants else None

    def hand_off(self, slug: str, variants: tuple[Variant, ...], request: bytes, answer: bytes | None) -> None:
        stats = self._stats
        with self._lock:
            room = max(0, self.max_inflight - self.inflight)
            sent, dropped = variants[:room], variants[room:]
            if sent and not self._write(encode_frame(slug, sent, request, answer)):
                sent, dropped = (), variants
            self.inflight += len(sent)
            for v in sent:
                key = (slug, v.name, v.model_id)
                entry = self._rows.get(key)
                if entry is None:
                    entry = self._rows[key] = [stats.variant(slug, v.name, v.model_id), 0]
                entry[0].mirrored += 1
                entry[1] += 1
            for v in dropped:
                stats.variant(slug, v.name, v.model_id).mirror_dropped += 1

    def _write(self, frame: bytes) -> bool:
        """One frame to the sender (under the lock); False when it has no room or is gone."""
        child = self._child
        if child is None:   # (one that died is found by its closed pipe: EPIPE below)
            child = self._spawn()
            if child is None:
                return False
        fd = child.stdin.fileno()
        if len(frame) <= self._pipe_bytes and len(frame) > self._pipe_bytes - self._queued(fd):
            return False      # no room: the sender is behind, the copies are dropped
        try:
            written = os.write(fd, frame)
        except BlockingIOError:
            return False
        except (BrokenPipeError, OSError):
            self._forget_child()
            return False
        if written < len(frame) and not self._write_rest(fd, memoryview(frame)[written:]):
            log.warning("the shadow sender took no data for %.0f s; starting a new one", _WRITE_REST_S)
            self._forget_child()
            return False
        return True

    @staticmethod
    def _queued(fd: int) -> int:
        """Bytes in the pipe not read yet."""
        return _COUNT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]

    @staticmethod
    def _write_rest(fd: int, rest: memoryview) -> bool:
        """The rest of a frame larger than the whole pipe (a request and answer of more
        than PIPE_BYTES): the serving thread waits for the sender to read it, and other
        serving threads' hand-offs wait for the lock meanwhile (a known cost of very large
        shadowed requests)."""
        deadline = time.monotonic() + _WRITE_REST_S
        while rest:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [fd], [], left)
            try:
                rest = rest[os.write(fd, rest):]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return True

    # ---- the sender process -----------------------------------------------------------

    def _spawn(self) -> subprocess.Popen | None:
        if self._stopped or time.monotonic() - self._spawned_at < RESPAWN_EVERY_S:
            return None
        self._forget_child()
        self._spawned_at = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "dataplane.shadow_sender", "--timeout", repr(self.timeout_s),
             "--nice", str(self._nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        fd = child.stdin.fileno()
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size: the default room
            pass
        self._pipe_bytes = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        os.set_blocking(fd, False)
        self._child = child
        child.gone = asyncio.Event()   # set when its output ends (stop() waits for it)
        self._loop.call_soon_threadsafe(self._loop.add_reader, child.stdout.fileno(), self._on_reports, child)
        return child

    def _forget_child(self) -> None:
        """Under the lock: the current sender is no longer written to; its copies in flight
        are not waited for."""
        child, self._child = self._child, None
        if child is None:
            return
        self.inflight = 0
        self._rows.clear()
        try:
            child.stdin.close()
        except OSError:
            pass
        if child.poll() is None:
            child.kill()

    def _on_reports(self, child: subprocess.Popen) -> None:
        """On the loop: reports from the sender, one JSON line each."""
        try:
            data = os.read(child.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(child.stdout.fileno())
            child.stdout.close()
            if child.poll() is None:   # it closed its output: done, or broken
                child.kill()
                child.wait()
            with self._lock:
                if self._child is child:
                    if not self._stopped:
                        log.warning("the shadow sender exited (%s); its copies in flight are not scored",
                                    child.returncode)
                    self._child = None
                    self.inflight = 0
                    self._rows.clear()
            child.gone.set()
            return
        lines = (self._report_buffer + data).split(b"\n")
        self._report_buffer = lines.pop()
        for line in lines:
            if line:
                self._apply(json.loads(line))

    def _apply(self, report: dict) -> None:
        """A report's counts, into the rows the copies were counted in when handed off (a
        deployment deleted meanwhile is not brought back by its last copies)."""
        with self._lock:
            for slug, name, model_id, finished, errors, latency_ms, compared, exact, agree, total, diff_sum, \
                    diff_count, buckets in report["rows"]:
                key = (slug, name, model_id)
                entry = self._rows.get(key)
                if entry is None:   # copies of a sender that was replaced: not counted in
                    continue
                row = entry[0]
                entry[1] -= finished
                if entry[1] <= 0:
                    del self._rows[key]
                row.mirror_errors += errors
                row.mirror_answers += finished
                row.mirror_latency_ms_sum += latency_ms
                for bucket, count in buckets:
                    row.mirror_latency_buckets[bucket] += count
                row.compared += compared
                row.exact_matches += exact
                row.label_agree += agree
                row.label_total += total
                row.abs_diff_sum += diff_sum
                row.abs_diff_count += diff_count
                self.compared_in_process += compared
                self.inflight = max(0, self.inflight - finished)

    async def stop(self, grace_s: float) -> None:
        """Let the sender finish its copies for up to grace_s (it applies their reports),
        then end it."""
        with self._lock:
            self._stopped = True
            child, self._child = self._child, None
            if child is not None:
                try:
                    child.stdin.close()   # end of input: the sender finishes and exits
                except OSError:
                    pass
        if child is None:
            return
        try:
            await asyncio.wait_for(child.gone.wait(), grace_s + 1.0)
        except asyncio.TimeoutError:
            pass
        if child.poll() is None:
            child.kill()
            await asyncio.get_running_loop().run_in_executor(None, child.wait)
        with self._lock:
            self.inflight = 0
            self._rows.clear()
