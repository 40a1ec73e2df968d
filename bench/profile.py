"""py-spy on a router under load: record collapsed stacks, summarize where the time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_command(binary: str, pid: int, seconds: float, out: Path, rate: int = 200,
                   gil_only: bool = False, subprocesses: bool = False) -> list[str]:
    """py-spy record without pausing the process. gil_only samples only the thread holding
    the GIL: where the one core Python code can use goes. (Native stacks are no help here:
    they need pausing and count grpc's idle poller threads in epoll_wait as busy.)"""
    cmd = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "--output", str(out), "--nonblocking"]
    if gil_only:
        cmd.append("--gil")
    if subprocesses:
        cmd.append("--subprocesses")
    return cmd


def start_record(binary: str, pid: int, seconds: float, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(record_command(binary, pid, seconds, out, **kw),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _frame_name(frame: str) -> str:
    """'handle (dataplane/router.py:123)' -> 'handle (dataplane/router.py)'; paths shortened
    to the part after site-packages or the repository."""
    frame = _LINE_NO.sub(")", frame.strip())
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            frame = f"{head}({tail.split(marker, 1)[-1]}"
    return frame


def summarize(collapsed: str, top: int = 15) -> dict:
    """From py-spy's raw output ('f1;f2;f3 count' per line): total samples, the top frames
    by self samples (where the CPU was) and by inclusive samples (what it was doing)."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: Counter) -> list[dict]:
        return [{"frame": f, "samples": n, "pct": round(100 * n / total, 1)} for f, n in counter.most_common(top)]
    return {"samples": total, "self": share(own) if total else [], "inclusive": share(inclusive) if total else []}
