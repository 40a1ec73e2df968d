"""Run h2load with gRPC frames and read its results: the summary and the per-request log."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.frames import GRPC_HEADERS, MODEL_INFER_PATH
from bench.stats import percentile

_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


@dataclass(frozen=True)
class LoadSettings:
    """One h2load run: -c clients with -m streams each, for -D seconds (after a warm-up)
    or for -n requests when duration_s is 0."""

    clients: int = 4
    streams: int = 16
    duration_s: float = 5.0
    warmup_s: float = 1.0
    requests: int = 0
    threads: int = 1
    rps: int = 0  # per client; 0: as fast as answers come (closed loop)
    timeout_s: float = 10.0  # -T/-N: a stuck connection ends the run instead of hanging it

    def describe(self) -> str:
        how = f"-D {self.duration_s:g}s --warm-up-time {self.warmup_s:g}s" if self.duration_s else f"-n {self.requests}"
        rate = f" --rps {self.rps}" if self.rps else ""
        return f"h2load -t {self.threads} -c {self.clients} -m {self.streams}{rate} {how}"


@dataclass(frozen=True)
class Summary:
    """h2load's closing summary."""

    seconds: float
    req_per_s: float
    total: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int
    data_bytes: int
    mean_us: float | None
    max_us: float | None


@dataclass(frozen=True)
class LoadResult:
    summary: Summary
    latencies_us: tuple[float, ...] = field(repr=False)
    failed_streams: int  # status -1 or non-2xx rows in the log

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latencies_us, 50) / 1000 if self.latencies_us else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_us, 99) / 1000 if self.latencies_us else None


REST_HEADERS = ("content-type: application/json",)


def rest_infer_path(model_name: str) -> str:
    return f"/v2/models/{model_name}/infer"


def command(url: str, body_path: Path, load: LoadSettings, log_path: Path | None = None,
            extra_headers: tuple[str, ...] = (), rest_model: str = "") -> list[str]:
    """The h2load command line for POSTing one gRPC frame to MODEL_INFER_PATH at url, or with
    rest_model one JSON body to that model's v2 REST infer path over HTTP/1.1 (--h1; -m is
    then the pipelining depth, so the REST rows keep it at 1 and use more clients)."""
    cmd = ["h2load", "-t", str(load.threads), "-c", str(load.clients), "-m", str(load.streams),
           "-d", str(body_path), "-T", f"{load.timeout_s:g}", "-N", f"{load.timeout_s:g}"]
    if rest_model:
        cmd.append("--h1")
    if load.rps:
        cmd += ["--rps", str(load.rps)]
    if load.duration_s:
        cmd += ["-D", f"{load.duration_s:g}", "--warm-up-time", f"{load.warmup_s:g}"]
    else:
        if load.requests <= 0:
            raise ValueError("an h2load run needs a duration or a request count")
        cmd += ["-n", str(load.requests)]
    for header in (REST_HEADERS if rest_model else GRPC_HEADERS) + tuple(extra_headers):
        cmd += ["-H", header]
    if log_path is not None:
        cmd += ["--log-file", str(log_path)]
    cmd.append(url.rstrip("/") + (rest_infer_path(rest_model) if rest_model else MODEL_INFER_PATH))
    return cmd


def _duration_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"not an h2load duration: {text!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]


def parse_summary(output: str) -> Summary:
    """Parse the summary h2load prints at the end of a run. ValueError when it is missing."""
    finished = re.search(r"finished in ([\d.]+(?:us|ms|s)), ([\d.]+) req/s", output)
    requests = re.search(
        r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if not (finished and requests and codes):
        raise ValueError("h2load printed no summary:\n" + output[-2000:])
    traffic = re.search(r"traffic:.*?\((\d+)\) data", output)
    data_bytes = int(traffic.group(1)) if traffic else 0
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output)
    mean_us = max_us = None
    if timing:
        max_us, mean_us = _duration_us(timing.group(2)), _duration_us(timing.group(3))
    return Summary(
        seconds=_duration_us(finished.group(1)) / 1_000_000, req_per_s=float(finished.group(2)),
        total=int(requests.group(1)), succeeded=int(requests.group(2)), failed=int(requests.group(3)),
        errored=int(requests.group(4)), timeout=int(requests.group(5)),
        status_2xx=int(codes.group(1)),
        status_other=int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)),
        data_bytes=data_bytes, mean_us=mean_us, max_us=max_us,
    )


def parse_log(text: str) -> tuple[list[float], int]:
    """(latencies in µs of the 2xx rows, count of failed or non-2xx rows) from --log-file:
    tab-separated start time µs, HTTP status (-1 for a failed stream), duration µs."""
    latencies: list[float] = []
    failed = 0
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status = int(parts[1])
        if 200 <= status < 300:
            latencies.append(float(parts[2]))
        else:
            failed += 1
    return latencies, failed


def run(url: str, body_path: Path, load: LoadSettings, work_dir: Path,
        extra_headers: tuple[str, ...] = (), rest_model: str = "") -> LoadResult:
    """Run h2load once, bounded by its own duration plus a margin."""
    log_path = work_dir / f"h2load-{time.monotonic_ns()}.log"
    cmd = command(url, body_path, load, log_path, extra_headers, rest_model)
    # A counted run is bounded by its count at a pessimistic 200 requests per second.
    expected = load.duration_s + load.warmup_s if load.duration_s else 30.0 + load.requests / 200
    limit = expected + load.timeout_s + 15
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    summary = parse_summary(proc.stdout)
    latencies, failed = parse_log(log_path.read_text() if log_path.exists() else "")
    log_path.unlink(missing_ok=True)
    return LoadResult(summary, tuple(latencies), failed)
