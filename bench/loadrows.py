"""The data-plane rows: h2load against one target, with backend counters as the check that
every 2xx answer was a real answer (h2load sees HTTP status only, not grpc-status)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from bench import h2load, probe, procs
from bench.frames import infer_request_body, large_request_body, rest_infer_body
from bench.h2load import LoadSettings


@dataclass(frozen=True)
class LoadTarget:
    row: str
    address: str  # host:port that h2load loads
    model_name: str  # model_name in the request body
    answer_backends: tuple[str, ...]  # backends whose answers reach the client
    mirror_backends: tuple[str, ...] = ()  # backends that get shadow copies only
    load: LoadSettings = LoadSettings()
    isolated: bool = False  # the proxy on its own CPU, backends and h2load on the others (bench.pinning)
    # Backends h2load keeps busy alongside the row, side_rps each: the shadow copies' work
    # without the mirroring (the floor of the shadow row on shared cores).
    side_backends: tuple[str, ...] = ()
    side_rps: int = 150
    rest: bool = False  # v2 REST JSON over HTTP/1.1 (h2load --h1) instead of gRPC
    headers: tuple[str, ...] = ()  # extra request headers ("name: value"), e.g. authorization
    # Requests of this many MiB sent alongside (large_rps a second, their own h2load, the same
    # deployment): the small calls' latency beside them (issue 11 target 4).
    large_mib: float = 0.0
    large_rps: int = 4
    large_model: str = ""  # the large requests' deployment ("": model_name)

    def body_path(self, work_dir: Path) -> Path:
        path = work_dir / (f"body-rest.json" if self.rest else f"body-{self.model_name}.bin")
        if not path.exists():
            path.write_bytes(rest_infer_body() if self.rest else infer_request_body(self.model_name))
        return path

    def large_body_path(self, work_dir: Path) -> Path:
        model = self.large_model or self.model_name
        path = work_dir / f"body-{model}-{self.large_mib:g}mib.bin"
        if not path.exists():
            path.write_bytes(large_request_body(model, self.large_mib))
        return path

    def h2load(self, work_dir: Path, load: LoadSettings | None = None) -> h2load.LoadResult:
        return h2load.run(f"http://{self.address}", self.body_path(work_dir), load or self.load, work_dir,
                          self.headers, self.model_name if self.rest else "")


async def _counts(backends: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    total, by_model = 0, {}
    for address in backends:
        stats = await probe.backend_stats(address)
        total += stats["requests"]
        for name, n in stats["by_model"].items():
            by_model[name] = by_model.get(name, 0) + n
    return total, by_model


async def run_once(target: LoadTarget, work_dir: Path) -> dict:
    """One h2load run; its throughput, latency percentiles and error accounting."""
    everyone = target.answer_backends + target.mirror_backends
    for address in everyone:
        await probe.reset_backend(address)
    side = LoadSettings(clients=1, streams=16, rps=target.side_rps, duration_s=target.load.duration_s, warmup_s=0,
                        timeout_s=target.load.timeout_s)
    body = LoadTarget("side", "", "side", ()).body_path(work_dir)
    extra = [asyncio.to_thread(h2load.run, f"http://{address}", body, side, work_dir) for address in target.side_backends]
    if target.large_mib:
        large = LoadSettings(clients=1, streams=4, rps=target.large_rps, duration_s=target.load.duration_s,
                             warmup_s=0, timeout_s=30)
        extra.append(asyncio.to_thread(h2load.run, f"http://{target.address}", target.large_body_path(work_dir),
                                       large, work_dir, target.headers))
    with procs.StolenDuring() as stolen:
        result, *others = await asyncio.gather(asyncio.to_thread(target.h2load, work_dir), *extra)
    answered, by_model = await _counts(target.answer_backends)
    mirrored, mirrored_by_model = await _counts(target.mirror_backends)
    s = result.summary
    http_errors = s.failed + s.errored + s.timeout + s.status_other
    # A grpc error travels in a 2xx response, so a 2xx that no backend answered is an error.
    # Requests still in flight when -D ends were answered but not counted by h2load: slack.
    unanswered = max(0, s.status_2xx - answered)
    large_fields = {}
    if target.large_mib:
        ls = others[-1].summary
        large_errors = ls.failed + ls.errored + ls.timeout + ls.status_other
        large_fields = {"large_2xx": ls.status_2xx, "large_errors": large_errors, "large_p99_ms": others[-1].p99_ms}
        # Large requests to the same deployment are answered by the same backends: they are
        # not the small calls', so they do not cover unanswered small ones.
        if target.large_model in ("", target.model_name):
            unanswered = max(0, s.status_2xx + ls.status_2xx - answered)
    return {**large_fields,
        "req_per_s": s.req_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "mean_ms": s.mean_us / 1000 if s.mean_us is not None else None,
        "max_ms": s.max_us / 1000 if s.max_us is not None else None,
        "requests": s.total, "status_2xx": s.status_2xx, "http_errors": http_errors,
        "backend_answered": answered, "unanswered_2xx": unanswered, "errors": http_errors + unanswered,
        "by_model": by_model, "mirrored": mirrored, "mirrored_by_model": mirrored_by_model,
        "load_avg_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
        "steal_s": stolen.seconds,
    }


async def warm_up(target: LoadTarget, work_dir: Path, requests: int) -> None:
    load = LoadSettings(clients=target.load.clients, streams=target.load.streams, duration_s=0,
                        requests=max(requests, target.load.clients), timeout_s=target.load.timeout_s)
    await asyncio.to_thread(target.h2load, work_dir, load)
