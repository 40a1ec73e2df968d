"""bench.pinning: the own-core rows put the proxy alone on one CPU and its feeders on the rest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from bench import pinning


@given(st.sets(st.integers(min_value=0, max_value=255), min_size=2, max_size=64))
def test_split_gives_the_proxy_one_cpu_and_the_rest_to_the_feeders(cpus):
    proxy, feeders = pinning.split_cpus(cpus)
    assert len(proxy) == 1 and proxy | feeders == cpus and not proxy & feeders


def test_split_refuses_a_single_cpu():
    with pytest.raises(ValueError, match="at least 2 CPUs"):
        pinning.split_cpus({0})


def _sleeper_with_a_child() -> subprocess.Popen:
    # A parent with a thread and a child process: isolation must reach all of them.
    code = ("import subprocess, sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(30)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.mark.skipif(not pinning.available(), reason="needs 2 CPUs and sched_setaffinity")
def test_isolated_pins_every_thread_and_child_then_lets_them_run_anywhere_again():
    everywhere = os.sched_getaffinity(0)
    proxy, feeder = _sleeper_with_a_child(), _sleeper_with_a_child()
    try:
        proxy_child, feeder_child = int(proxy.stdout.readline()), int(feeder.stdout.readline())
        with pinning.isolated([proxy.pid], [feeder.pid]) as (proxy_cpus, feeder_cpus):
            for pid in (proxy.pid, proxy_child, *pinning._threads(proxy.pid)):
                assert pinning.affinity_of(pid) == proxy_cpus
            for pid in (feeder.pid, feeder_child, os.getpid(), *pinning._threads(feeder.pid)):
                assert pinning.affinity_of(pid) == feeder_cpus
        for pid in (proxy.pid, proxy_child, feeder.pid, feeder_child, os.getpid()):
            assert pinning.affinity_of(pid) == everywhere
    finally:
        for p in (proxy, feeder):
            for child in pinning.descendants(p.pid):
                os.kill(child, 9)
            p.kill()
            p.wait(timeout=5)
