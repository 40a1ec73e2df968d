"""CPU isolation for the "own core" load rows: the proxy under test (nginx or the router,
with all its threads and child processes) on the machine's last CPU, and everything that
feeds it (the backends, h2load, the harness) on the others, so the proxy's figure is what
one core of proxy does rather than what is left of cores shared with its own load.

Affinity is per thread on Linux, so every thread of every process is set; threads started
later inherit it from the thread that starts them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.procs import descendants


def available() -> bool:
    """Isolation needs at least two CPUs this process may run on, and Linux's affinity calls."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def split_cpus(cpus: set[int]) -> tuple[set[int], set[int]]:
    """(the proxy's CPUs, everyone else's): the highest CPU for the proxy, the rest for the others."""
    if len(cpus) < 2:
        raise ValueError(f"CPU isolation needs at least 2 CPUs, have {sorted(cpus)}")
    proxy = max(cpus)
    return {proxy}, cpus - {proxy}


def _threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def set_affinity(pids: Iterable[int], cpus: set[int], with_descendants: bool = True) -> int:
    """Every thread of every pid, and of their descendants, on cpus; how many threads were set."""
    count = 0
    for pid in pids:
        for p in (pid, *descendants(pid)) if with_descendants else (pid,):
            for tid in _threads(p):
                try:
                    os.sched_setaffinity(tid, cpus)
                    count += 1
                except (ProcessLookupError, PermissionError):
                    continue  # a thread that ended meanwhile
    return count


def affinity_of(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))


@contextmanager
def isolated(proxy_pids: Iterable[int], feeder_pids: Iterable[int]) -> Iterator[tuple[set[int], set[int]]]:
    """The proxy on its own CPU and the feeders (plus this process) on the others; afterwards
    every one of them may run anywhere again."""
    everywhere = set(os.sched_getaffinity(0))
    proxy_cpus, feeder_cpus = split_cpus(everywhere)
    proxies, feeders, me = list(proxy_pids), list(feeder_pids), [os.getpid()]
    try:
        set_affinity(proxies, proxy_cpus)
        set_affinity(feeders, feeder_cpus)
        # This process's own threads only (its children include the proxies); what it starts
        # meanwhile (h2load) inherits their CPUs.
        set_affinity(me, feeder_cpus, with_descendants=False)
        yield proxy_cpus, feeder_cpus
    finally:
        set_affinity(me, everywhere, with_descendants=False)
        set_affinity(feeders, everywhere)
        set_affinity(proxies, everywhere)
