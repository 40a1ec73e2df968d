"""`tsplit up` and `tsplit down`: the embedded default, every part a real local process.

`up` starts etcd (unless --etcd names a cluster), the control plane, the gateway, N routers
and optionally the demo model servers, each on a free loopback port with its log in
D/logs/, waits until all are healthy, and writes D/stack.json. `down` stops what
stack.json lists. Children run in their own sessions, so `up --detach` can return.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tsplit import devkeys
from tsplit.cli.context import CliError
from tsplit.etcd_server import EtcdMember, free_port, wait_for_etcd_health

HEALTH_TIMEOUT_S = 60.0
ADMIN_SUB = "admin"


def _bin(name: str) -> str:
    """A console script of this installation (beside the running python)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise CliError(f"{path} is missing: reinstall tsplit (`pip install -e .`)")
    return str(path)


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, timeout: float = 1.0) -> bool:
    import httpx
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Child:
    name: str
    command: list[str]
    healthy: Callable[[], bool]
    info: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self, logs: Path) -> None:
        with open(logs / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.info["pid"] = self.process.pid
        self.info["started"] = process_start_time(self.process.pid)


def process_start_time(pid: int) -> int | None:
    """When pid started, in clock ticks since boot (/proc/PID/stat field 22): with the pid,
    it names one process (a pid is reused, its start time is not). None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def still_ours(pid: int, started: int | None) -> bool:
    """pid is the process stack.json recorded (its start time matches, when recorded)."""
    return started is None or process_start_time(pid) == started


def _wait_healthy(children: list[Child], logs: Path, deadline: float) -> None:
    pending = list(children)
    while pending:
        for child in list(pending):
            if child.process is not None and child.process.poll() is not None:
                tail = _log_tail(logs / f"{child.name}.log")
                raise CliError(f"{child.name} exited with code {child.process.returncode} while starting:\n{tail}")
            if child.healthy():
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.name for c in pending)
            raise CliError(f"not healthy within {HEALTH_TIMEOUT_S:.0f} s: {names} (logs in {logs})")
        if pending:
            time.sleep(0.1)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM the process group, SIGKILL it after timeout. False if it was already gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class UpOptions:
    directory: Path
    routers: int = 2
    demo_models: bool = False
    etcd: str | None = None
    etcd_prefix: str = "/tsplit"
    org_id: str = "org_1"


DEMO_MODELS = (
    # name, weights (2 inputs x 2 classes, row-major), bias: three small linear classifiers;
    # linear-b is linear-a with a small change, linear-c disagrees more.
    ("linear-a", "1,0,0,1", "0,0"),
    ("linear-b", "1,0.1,0,1", "0,0.05"),
    ("linear-c", "0,1,1,0", "0,0"),
)


def up(options: UpOptions, log: Callable[[str], None]) -> tuple[dict[str, Any], list[Child]]:
    """Start the stack; returns the stack.json content and the children (for a foreground up)."""
    d = options.directory
    if (d / "stack.json").exists():
        stack = json.loads((d / "stack.json").read_text())
        alive = [p for p in _stack_pids(stack) if pid_alive(p)]
        if alive:
            raise CliError(f"a stack is already running from {d} (pids {alive}); `tsplit down --dir {d}` first")
    logs = d / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    started: list[Child] = []
    etcd_info: dict[str, Any] = {"prefix": options.etcd_prefix}
    try:
        if options.etcd:
            etcd_info["endpoints"] = options.etcd.split(",")
        else:
            member = EtcdMember(data_dir=d / "etcd", log_path=logs / "etcd.log").start(wait=False)
            etcd_info.update(endpoints=[member.endpoint], pid=member.process.pid,
                             started=process_start_time(member.process.pid))
            started.append(Child("etcd", member.command(), lambda m=member: wait_for_etcd_health(m.endpoint, 0.2),
                                 info=etcd_info, process=member.process))
            log(f"etcd        {member.endpoint} (pid {member.process.pid})")
        etcd_endpoints = ",".join(etcd_info["endpoints"])

        private_path, public_path = d / "dev-private.pem", d / "dev-public.pem"
        if not private_path.exists():
            private_path, public_path = devkeys.write_key_pair(d)
        admin_token = devkeys.mint_token(private_path.read_bytes(), sub=ADMIN_SUB, org_id=options.org_id,
                                         role="admin", ttl_s=7 * 24 * 3600)
        jwt_flags = ["--jwt-public-key", str(public_path), "--jwt-issuer", devkeys.DEV_ISSUER,
                     "--jwt-audience", devkeys.DEV_AUDIENCE]
        prefix_flags = ["--etcd", etcd_endpoints, "--etcd-prefix", options.etcd_prefix]

        cp_address = f"127.0.0.1:{free_port()}"
        cp = Child("controlplane", [_bin("tsplit-controlplane"), "--listen", cp_address, *prefix_flags, *jwt_flags],
                   lambda: grpc_serving(cp_address), info={"address": cp_address})
        gw_url = f"http://127.0.0.1:{free_port()}"
        gw = Child("gateway", [_bin("tsplit-gateway"), "--listen", gw_url.removeprefix("http://"),
                               "--controlplane", cp_address, *jwt_flags],
                   lambda: http_ok(f"{gw_url}/healthz"), info={"url": gw_url})
        routers = []
        for i in range(1, options.routers + 1):
            address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            routers.append(Child(
                f"router-{i}", [_bin("tsplit-router"), "--listen", address, "--metrics-listen", metrics,
                                "--router-id", f"r-{i}", "--workers", "1", *prefix_flags],
                lambda a=address: grpc_serving(a),
                info={"router_id": f"r-{i}", "address": address, "metrics_url": f"http://{metrics}/metrics"}))
        models = []
        if options.demo_models:
            for name, weights, bias in DEMO_MODELS:
                address = f"127.0.0.1:{free_port()}"
                models.append(Child(
                    f"model-{name}", [_bin("tsplit-demo-model"), "--listen", address, "--model-name", name,
                                      "--weights", weights, "--bias", bias],
                    lambda a=address: grpc_serving(a), info={"endpoint": address, "model_name": name}))
        for child in [cp, gw, *routers, *models]:
            child.start(logs)
            started.append(child)
            log(f"{child.name:<11} {child.info.get('address') or child.info.get('url') or child.info.get('endpoint')}"
                f" (pid {child.process.pid})")
        _wait_healthy(started, logs, deadline)

        demo_models = []
        if models:
            demo_models = register_demo_models(cp_address, admin_token, models)
        stack = {
            "dir": str(d),
            "etcd": etcd_info,
            "controlplane": cp.info,
            "gateway": gw.info,
            "routers": [r.info for r in routers],
            "demo_models": demo_models,
            "jwt": {"private_key": str(private_path), "public_key": str(public_path), "admin_token": admin_token,
                    "issuer": devkeys.DEV_ISSUER, "audience": devkeys.DEV_AUDIENCE, "org_id": options.org_id},
            "logs": str(logs),
        }
        tmp = d / "stack.json.tmp"
        tmp.write_text(json.dumps(stack, indent=2) + "\n")
        tmp.replace(d / "stack.json")
        return stack, started
    except BaseException:
        for child in reversed(started):
            if child.process is not None:
                stop_pid(child.process.pid)
        raise


def register_demo_models(cp_address: str, token: str, models: list[Child]) -> list[dict[str, Any]]:
    from google.protobuf import struct_pb2
    from tsplit.v1 import controlplane_pb2 as cp_pb, controlplane_pb2_grpc as cp_grpc

    registered = []
    with grpc.insecure_channel(cp_address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        for child in models:
            body = struct_pb2.Struct()
            body.update({"endpoint": child.info["endpoint"], "model_name": child.info["model_name"]})
            model = stub.RegisterModel(cp_pb.RegisterModelRequest(body=body),
                                       metadata=[("authorization", f"Bearer {token}")], timeout=10)
            registered.append({"model_id": model.model_id, **child.info})
    return registered


def _stack_processes(stack: dict[str, Any]) -> list[tuple[int, int | None]]:
    """Every (pid, start time) in stack.json, in the order to stop them (clients of etcd
    first, etcd last)."""
    entries = [*stack.get("demo_models", []), *stack.get("routers", []), stack.get("gateway", {}),
               stack.get("controlplane", {}), stack.get("etcd", {})]
    return [(e["pid"], e.get("started")) for e in entries if e.get("pid")]


def _stack_pids(stack: dict[str, Any]) -> list[int]:
    """Every pid in stack.json that is still the process it recorded."""
    return [pid for pid, started in _stack_processes(stack) if still_ours(pid, started)]


def down(directory: Path, log: Callable[[str], None]) -> int:
    """Stop every process stack.json lists; returns how many were running."""
    path = directory / "stack.json"
    if not path.exists():
        raise CliError(f"no stack in {directory} (no stack.json)")
    stack = json.loads(path.read_text())
    stopped = 0
    for pid, started in _stack_processes(stack):
        if not still_ours(pid, started):  # it exited and the pid now names another process
            log(f"pid {pid} is no longer the stack's process; left alone")
            continue
        if stop_pid(pid):
            stopped += 1
            log(f"stopped pid {pid}")
    path.unlink()
    return stopped
