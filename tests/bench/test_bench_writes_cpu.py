"""bench.writes' CPU accounting: a process's CPU from /proc, and CPU per PATCH."""

from __future__ import annotations

import os
import time

from bench.writes import cpu_us_per_patch, process_cpu_s


def test_process_cpu_grows_with_work_done():
    before = process_cpu_s(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # bounded: 50 ms of CPU
        sum(range(1000))
    after = process_cpu_s(os.getpid())
    assert after - before >= 0.03  # clock ticks are 10 ms


def test_cpu_per_patch_divides_each_process_delta():
    per = cpu_us_per_patch({"gateway": 1.0, "etcd": 2.0}, {"gateway": 1.5, "etcd": 2.25}, 1000)
    assert per == {"gateway": 500.0, "etcd": 250.0}
    assert cpu_us_per_patch({"gateway": 1.0}, {"gateway": 2.0}, 0) == {"gateway": None}
