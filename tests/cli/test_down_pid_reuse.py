"""`tsplit down` signals only the processes stack.json recorded: a pid whose start time
differs (the process exited and the pid was reused) is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

from tsplit.cli.stack import down, pid_alive, process_start_time


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_down_stops_its_own_process_and_leaves_a_reused_pid_alone(tmp_path):
    ours, stranger = sleeper(), sleeper()
    try:
        started = process_start_time(ours.pid)
        assert started is not None
        stack = {"controlplane": {"pid": ours.pid, "started": started},
                 "gateway": {"pid": stranger.pid, "started": process_start_time(stranger.pid) - 1}}
        (tmp_path / "stack.json").write_text(json.dumps(stack))
        lines: list[str] = []
        assert down(tmp_path, lines.append) == 1
        ours.wait(10)
        assert not pid_alive(ours.pid)
        assert pid_alive(stranger.pid) and stranger.poll() is None
        assert any(f"pid {stranger.pid} is no longer" in line for line in lines), lines
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait(10)
