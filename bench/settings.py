"""How big a run is: --quick for a smoke run of a couple of minutes, the default for the
figures in BENCHMARKS.md (under ~15 minutes on 2 cores)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.h2load import LoadSettings

PHASES = ("etcd", "load", "native", "client", "precision", "propagation", "writes", "scale", "profile", "guardrails")


@dataclass(frozen=True)
class BenchSettings:
    quick: bool = False
    repeats: int = 5
    # Saturating rows: closed loop, 4 connections x 16 streams = 64 requests in flight.
    load: LoadSettings = LoadSettings(clients=4, streams=16, duration_s=6, warmup_s=0)
    # Shadow rows: a fixed rate below saturation (4 clients x 150 req/s), so p99 shows
    # waiting on mirrors rather than a saturated CPU.
    # 10 s: 6,000 requests a run, so a p99 rests on ~60 samples above it.
    rate_load: LoadSettings = LoadSettings(clients=4, streams=4, rps=150, duration_s=10, warmup_s=0)
    # One request at a time: the latency a hop adds, with no queueing.
    single_load: LoadSettings = LoadSettings(clients=1, streams=1, duration_s=5, warmup_s=0)
    client_threads: int = 8  # bench.pyload threads for the python-client rows
    warmup_requests: int = 3000
    precision_requests: int = 60_000
    etcd_watch_puts: int = 300
    txn_seconds: float = 4.0
    propagation_changes: int = 200
    write_seconds: float = 6.0
    write_settle_s: float = 3.0  # pause before each etcd txn measurement of the writes rows
    writers: int = 16
    scale_deployments: int = 10_000
    scale_propagation_changes: int = 50
    get_samples: int = 300
    results_dir: Path = Path("bench-results")
    keep_work_dir: bool = False
    phases: tuple[str, ...] = PHASES

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phase(s) {sorted(unknown)}; known: {', '.join(PHASES)}")
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")


def quick_settings(**overrides) -> BenchSettings:
    base = BenchSettings(
        quick=True, repeats=1,
        load=LoadSettings(clients=4, streams=16, duration_s=2, warmup_s=0),
        rate_load=LoadSettings(clients=4, streams=4, rps=150, duration_s=2, warmup_s=0),
        single_load=LoadSettings(clients=1, streams=1, duration_s=1, warmup_s=0),
        warmup_requests=500, precision_requests=10_000, etcd_watch_puts=50, txn_seconds=1,
        propagation_changes=20, write_seconds=2, scale_deployments=2_000, scale_propagation_changes=5,
        get_samples=50,
    )
    return replace(base, **overrides)
