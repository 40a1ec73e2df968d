"""Worker children die with their supervisor (PR_SET_PDEATHSIG) and restart with backoff."""

from __future__ import annotations

import subprocess
import sys
import time

from dataplane.supervision import RestartBackoff
from tsplit.cli.stack import pid_alive

SUPERVISOR = """
import sys, time
from dataplane.supervision import spawn_child
child = spawn_child([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_dies_when_its_supervisor_is_killed():
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True)
    try:
        child = int(supervisor.stdout.readline())
        assert pid_alive(child)
        supervisor.kill()  # SIGKILL: no handler of the supervisor runs
        supervisor.wait(10)
        deadline = time.monotonic() + 10
        while pid_alive(child):
            assert time.monotonic() < deadline, "the child outlived its supervisor"
            time.sleep(0.05)
    finally:
        supervisor.kill()
        supervisor.wait(10)


def test_restarts_back_off_while_a_child_keeps_dying_and_reset_once_it_lives():
    backoff = RestartBackoff(first_s=1, cap_s=8, healthy_s=60)
    assert [backoff.delay(0.1) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.delay(61) == 1
