"""The data-plane rows: h2load against one target, with backend counters as the check that
every 2xx answer was a real answer (h2load sees HTTP status only, not grpc-status)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from bench import h2load, probe
from bench.frames import infer_request_body
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

    def body_path(self, work_dir: Path) -> Path:
        path = work_dir / f"body-{self.model_name}.bin"
        if not path.exists():
            path.write_bytes(infer_request_body(self.model_name))
        return path


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
    result, *_ = await asyncio.gather(
        asyncio.to_thread(h2load.run, f"http://{target.address}", target.body_path(work_dir), target.load, work_dir),
        *(asyncio.to_thread(h2load.run, f"http://{address}", body, side, work_dir) for address in target.side_backends))
    answered, by_model = await _counts(target.answer_backends)
    mirrored, mirrored_by_model = await _counts(target.mirror_backends)
    s = result.summary
    http_errors = s.failed + s.errored + s.timeout + s.status_other
    # A grpc error travels in a 2xx response, so a 2xx that no backend answered is an error.
    # Requests still in flight when -D ends were answered but not counted by h2load: slack.
    unanswered = max(0, s.status_2xx - answered)
    return {
        "req_per_s": s.req_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "mean_ms": s.mean_us / 1000 if s.mean_us is not None else None,
        "max_ms": s.max_us / 1000 if s.max_us is not None else None,
        "requests": s.total, "status_2xx": s.status_2xx, "http_errors": http_errors,
        "backend_answered": answered, "unanswered_2xx": unanswered, "errors": http_errors + unanswered,
        "by_model": by_model, "mirrored": mirrored, "mirrored_by_model": mirrored_by_model,
        "load_avg_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
    }


async def warm_up(target: LoadTarget, work_dir: Path, requests: int) -> None:
    load = LoadSettings(clients=target.load.clients, streams=target.load.streams, duration_s=0,
                        requests=requests, timeout_s=target.load.timeout_s)
    await asyncio.to_thread(h2load.run, f"http://{target.address}", target.body_path(work_dir), load, work_dir)
