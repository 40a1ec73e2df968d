"""One writer process of target 4: a few PATCH clients, each a thread with its own
keep-alive HTTP/1.1 connection on a raw socket (bench.patch_writers.PatchClient: httpx spent 2-11 ms
of CPU per request, http.client ~0.35 ms, this ~0.1 ms), so the harness limits the rate it
measures as little as it can.

Protocol with the parent (bench.writes), one JSON line each way: the parent writes the
plan on stdin; the process connects its clients, prints "ready", waits for "go" on stdin
(so every process starts together), writes, and prints its tally as one JSON line."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class WriterPlan:
    base_url: str
    headers: dict[str, str]
    slots: list[tuple[str, str]]  # (deployment slug, challenger id), one client each
    warmup_s: float
    duration_s: float
    timeout_s: float = 15.0

    def to_json(self) -> str:
        return json.dumps({"base_url": self.base_url, "headers": self.headers, "slots": self.slots,
                           "warmup_s": self.warmup_s, "duration_s": self.duration_s, "timeout_s": self.timeout_s})

    @classmethod
    def from_json(cls, text: str) -> "WriterPlan":
        d = json.loads(text)
        return cls(d["base_url"], d["headers"], [tuple(s) for s in d["slots"]], d["warmup_s"], d["duration_s"],
                   d.get("timeout_s", 15.0))


@dataclass
class Tally:
    """What one process's clients saw; merge() adds up several processes'."""
    ok_by_slug: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    last_written: dict[str, int] = field(default_factory=dict)  # challenger id -> last pct with a 200
    ok_timed: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # the writer processes' own CPU while writing (summed by merge)

    def to_json(self) -> str:
        return json.dumps({"ok_by_slug": self.ok_by_slug, "failures": self.failures, "latencies_ms": self.latencies_ms,
                           "last_written": self.last_written, "ok_timed": self.ok_timed, "elapsed_s": self.elapsed_s, "cpu_s": self.cpu_s})

    @classmethod
    def from_json(cls, text: str) -> "Tally":
        d = json.loads(text)
        return cls(Counter(d["ok_by_slug"]), Counter(d["failures"]), d["latencies_ms"], d["last_written"],
                   d["ok_timed"], d["elapsed_s"], d.get("cpu_s", 0.0))


def merge(tallies: list[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.ok_by_slug.update(t.ok_by_slug)
        total.failures.update(t.failures)
        total.latencies_ms.extend(t.latencies_ms)
        total.last_written.update(t.last_written)
        total.ok_timed += t.ok_timed
        total.elapsed_s = max(total.elapsed_s, t.elapsed_s)
        total.cpu_s += t.cpu_s
    return total


def flip(pct: int) -> int:
    """The next share a client writes: 1 <-> 2, so every PATCH changes something."""
    return 2 if pct == 1 else 1


def patch_body(challenger_id: str, pct: int) -> bytes:
    return json.dumps({"action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct}).encode()


def failure_key(status: int, body: bytes) -> str:
    """'<status> <error code>' for the failure counts; the code when the body is the
    gateway's JSON error, else just the status."""
    code = ""
    try:
        parsed = json.loads(body) if body else {}
        code = parsed.get("error", "") if isinstance(parsed, dict) else ""
    except ValueError:
        pass
    return f"{status} {code}"


def split_slots(slots: list, processes: int) -> list[list]:
    """Deal slots round-robin over at most `processes` non-empty groups."""
    groups = [slots[i::processes] for i in range(max(1, processes))]
    return [g for g in groups if g]


class ResponseError(OSError):
    """An answer this lean client cannot read (no Content-Length, a closed connection)."""


class PatchClient:
    """One keep-alive HTTP/1.1 connection writing one challenger's share, on a raw socket:
    the two requests it ever sends (share 1 and share 2) are built once, and an answer is
    read by its status line and Content-Length only. http.client cost ~350 us of CPU per
    PATCH (most of it parsing headers with the email package), on the 2 cores the server
    under test shares with it."""

    def __init__(self, plan: WriterPlan, slot: tuple[str, str]):
        url = urlsplit(plan.base_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=plan.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.slug, self.challenger_id = slot
        self.requests = {pct: self._request(url.netloc, plan.headers, pct) for pct in (1, 2)}
        self.buffer = b""

    def _request(self, host: str, headers: dict[str, str], pct: int) -> bytes:
        body = patch_body(self.challenger_id, pct)
        lines = [f"PATCH /v1/deployments/{self.slug}/traffic HTTP/1.1", f"Host: {host}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ResponseError("the server closed the connection")
        self.buffer += chunk

    def patch(self, pct: int) -> tuple[int, bytes]:
        self.sock.sendall(self.requests[pct])
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
        status_line, *header_lines = head.split("\r\n")
        length = None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise ResponseError(f"an answer without Content-Length: {status_line!r}")
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split(" ", 2)[1]), body

    def close(self) -> None:
        self.sock.close()


def write_until(client: PatchClient, tally: Tally, lock: threading.Lock, timed_from: float, deadline: float) -> None:
    pct_now = 1
    while time.perf_counter() < deadline:
        pct = flip(pct_now)
        sent = time.perf_counter()
        try:
            status, body = client.patch(pct)
        except (OSError, ValueError, IndexError) as exc:
            with lock:  # the connection is gone: count it and stop this client
                tally.failures[f"connection {type(exc).__name__}"] += 1
            return
        done = time.perf_counter()
        with lock:
            if sent >= timed_from:
                tally.latencies_ms.append((done - sent) * 1000)
            if status == 200:
                tally.ok_by_slug[client.slug] += 1
                if done >= timed_from:
                    tally.ok_timed += 1
                pct_now = pct
                tally.last_written[client.challenger_id] = pct
            else:
                tally.failures[failure_key(status, body)] += 1


def run(plan: WriterPlan, wait_for_go) -> Tally:
    clients = [PatchClient(plan, slot) for slot in plan.slots]
    try:
        wait_for_go()
        tally, lock = Tally(), threading.Lock()
        cpu_from = time.process_time()
        timed_from = time.perf_counter() + plan.warmup_s
        deadline = timed_from + plan.duration_s
        threads = [threading.Thread(target=write_until, args=(c, tally, lock, timed_from, deadline)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tally.elapsed_s = time.perf_counter() - timed_from
        tally.cpu_s = time.process_time() - cpu_from
        return tally
    finally:
        for c in clients:
            c.close()


def main() -> None:
    plan = WriterPlan.from_json(sys.stdin.readline())

    def wait_for_go() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go from the parent")

    print(run(plan, wait_for_go).to_json(), flush=True)


if __name__ == "__main__":
    main()
