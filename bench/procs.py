"""Child processes of a benchmark run: started with their own log, found by port, stopped
by their own pid (and process group) only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tsplit.etcd_server import free_port, wait_for_port

# Whether each child leads its own session (the default) or stays in the bench's
# (--one-session). Under kernel autogroups a session is a CPU group: own sessions share the
# cores between the proxy, each backend and etcd as equals; one session shares them between
# threads (BENCHMARKS.md, session 10).
_own_sessions = True


def use_own_sessions(own: bool) -> None:
    global _own_sessions
    _own_sessions = own


def own_sessions() -> bool:
    return _own_sessions


def group_kwargs() -> dict:
    """Popen arguments that make a child lead its own process group (what stop() signals),
    and its own session unless --one-session."""
    return {"start_new_session": True} if _own_sessions else {"process_group": 0}


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    http_address: str = ""  # a bench backend's v2 REST side, host:port

    def start(self, env: dict[str, str] | None = None) -> "Child":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, **group_kwargs(),
            env={**os.environ, **(env or {})})
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child's own process group (its workers too), SIGKILL after timeout."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def wait_for_listen(child: Child, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}")
        if wait_for_port("127.0.0.1", port, 0.2):
            return
    raise RuntimeError(f"{child.name} did not listen on port {port} within {timeout}s:\n{child.log_tail()}")


def start_backend(work_dir: Path, name: str, delay_ms: float = 0.0, timeout: float = 15.0) -> tuple[Child, str]:
    """One bench backend process; (child, "127.0.0.1:port") of its gRPC side. Its v2 REST
    side (HTTP/1.1) listens too, at child.http_address."""
    port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "bench.backend", "--listen", f"127.0.0.1:{port}", "--name", name,
           "--http-listen", f"127.0.0.1:{http_port}"]
    if delay_ms:
        cmd += ["--delay-ms", str(delay_ms)]
    child = Child(f"backend {name}", cmd, work_dir / f"backend-{name}.log",
                  http_address=f"127.0.0.1:{http_port}").start()
    wait_for_listen(child, port, timeout)
    wait_for_listen(child, http_port, timeout)
    return child, f"127.0.0.1:{port}"


def rss_bytes(pid: int) -> int:
    """Resident set size of pid and all its descendants (a router with --workers)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            found.append(c)
            stack.append(c)
    return found


def start_refproxy(work_dir: Path, mode: str, backend: str, timeout: float = 15.0) -> tuple[Child, str]:
    """A reference pass-through proxy (bench.refproxy) in front of backend."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.refproxy", "--mode", mode, "--listen", f"127.0.0.1:{port}",
           "--backend", backend]
    child = Child(f"refproxy {mode}", cmd, work_dir / f"refproxy-{mode}.log").start()
    wait_for_listen(child, port, timeout)
    return child, f"127.0.0.1:{port}"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU time the hypervisor gave other guests while this machine's vCPUs wanted it (all
    CPUs, /proc/stat "steal"), so far: stalls that hit every row alike and no proxy causes."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


class StolenDuring:
    """With-block: `.seconds` is the CPU the hypervisor took while it ran (steal_seconds)."""

    def __enter__(self) -> StolenDuring:
        self._start, self.seconds = steal_seconds(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = steal_seconds() - self._start


def cpu_ticks_of_stat(stat: str) -> int:
    """utime + stime (clock ticks) from one /proc/<pid>/stat line; the command name in
    parentheses may hold spaces and parentheses, so fields count from the last ')'."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by pid and every live descendant: a proxy's whole
    process tree (nginx's master and workers, a router and its children)."""
    ticks = 0
    for p in [pid, *descendants(pid)]:
        try:
            ticks += cpu_ticks_of_stat(Path(f"/proc/{p}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
    return ticks / _CLOCK_TICKS
