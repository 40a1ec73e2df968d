"""`tsplit up` and `tsplit down`: the embedded default, every part a real local process.

`up` starts etcd (unless --etcd names a cluster), the control plane, the gateway, N routers
and optionally the demo model servers, each on a free loopback port with its log in
D/logs/, waits until all are healthy, and writes D/stack.json. `down` stops what
stack.json lists. Children run in their own sessions, so `up --detach` can return.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
    auth: str = "none"  # the routers' --auth: "jwt" starts them on the native core, verifying tokens


DEMO_MODELS = (
    # name, weights (2 inputs x 2 classes, row-major), bias: three small linear classifiers;
    # linear-b is linear-a with a small change, linear-c disagrees more.
    ("linear-a", "1,0,0,1", "0,0"),
    ("linear-b", "1,0.1,0,1", "0,0.05"),
    ("linear-c", "0,1,1,0", "0,0"),
)


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP) arrived while `up` was starting the stack."""


class _SignalsInterrupt:
    """While starting, SIGTERM and SIGHUP raise Interrupted so that what was started is
    stopped (Python's default for SIGTERM would exit without cleaning up). Inside
    `shielded()` (a child spawned but not yet recorded) the signal waits until the block
    ends, so no child is ever started without being on the list of what to stop."""

    def __init__(self) -> None:
        self._shielded = False
        self._pending: str | None = None

    def _interrupt(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._shielded:
            self._pending = name
            return
        raise Interrupted(name)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def shielded(self):
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._pending is not None:
            raise Interrupted(self._pending)


def write_stack(directory: Path, stack: dict[str, Any]) -> None:
    """stack.json, readable by its owner only from its first byte (it holds an admin token)."""
    path, tmp = directory / "stack.json", directory / "stack.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a tmp file left by an older version may have other bits
        f.write(json.dumps(stack, indent=2) + "\n")
    os.replace(tmp, path)


def _port_of(address: str | None) -> int | None:
    if not address:
        return None
    port = address.rstrip("/").rpartition(":")[2]
    return int(port) if port.isdigit() else None


def _port_free(port: int | None) -> bool:
    if not port:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _same_or_free_port(previous: str | None) -> int:
    """The port a part had before when it is free again (so its clients need not change), else a free one."""
    port = _port_of(previous)
    return port if port and _port_free(port) else free_port()


def _running(info: dict[str, Any] | None, healthy: Callable[[], bool]) -> bool:
    """The part stack.json recorded still runs (the same process: pid and start time) and answers."""
    return (bool(info) and bool(info.get("pid")) and pid_alive(info["pid"])
            and still_ours(info["pid"], info.get("started")) and healthy())


def up(options: UpOptions, log: Callable[[str], None]) -> tuple[dict[str, Any], list[Child]]:
    """Bring the stack in options.directory up: a reconciler. Parts that run and answer are
    kept; the rest are started (a killed etcd on its data and port, a control plane on its
    address when free); demo models that come back on new ports are updated in place so
    existing deployments route to them. stack.json is rewritten as each part starts, and an
    interrupted or failed `up` stops everything it started. Returns the stack.json content
    and the children this call started."""
    d = options.directory
    d.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if (d / "stack.json").exists():
        try:
            previous = json.loads((d / "stack.json").read_text())
        except ValueError:
            log(f"{d / 'stack.json'} is not JSON; starting afresh")
    logs = d / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    started: list[Child] = []
    stack: dict[str, Any] = {"dir": str(d), "logs": str(logs), **{k: v for k, v in previous.items()
                                                                   if k not in ("dir", "logs")}}
    kept: list[str] = []

    signals = _SignalsInterrupt()

    def launch(child: Child, key: str, index: int | None = None) -> None:
        with signals.shielded():
            if child.process is None:
                child.start(logs)
            started.append(child)
        if index is None:
            stack[key] = child.info
        else:
            stack[key][index] = child.info
        write_stack(d, stack)  # `tsplit down` can stop it from now on, whatever happens to this process
        where = child.info.get("address") or child.info.get("url") or child.info.get("endpoint") or \
            ",".join(child.info.get("endpoints", []))
        log(f"{child.name:<11} {where} (pid {child.info['pid']})")

    try:
        with signals.installed():
            # etcd
            old_etcd = previous.get("etcd") or {}
            if options.etcd:
                stack["etcd"] = {"endpoints": options.etcd.split(","), "prefix": options.etcd_prefix}
            elif _running(old_etcd, lambda: wait_for_etcd_health(old_etcd["endpoints"][0], 1.0)):
                kept.append("etcd")
            else:
                member = EtcdMember(
                    data_dir=d / "etcd", log_path=logs / "etcd.log",
                    client_port=_same_or_free_port((old_etcd.get("endpoints") or [None])[0]),
                    peer_port=old_etcd.get("peer_port") if _port_free(old_etcd.get("peer_port")) else free_port())
                member.start(wait=False)
                info = {"endpoints": [member.endpoint], "pid": member.process.pid, "peer_port": member.peer_port,
                        "started": process_start_time(member.process.pid), "prefix": options.etcd_prefix}
                launch(Child("etcd", member.command(), lambda m=member: wait_for_etcd_health(m.endpoint, 0.2),
                             info=info, process=member.process), "etcd")
            etcd_endpoints = ",".join(stack["etcd"]["endpoints"])
            etcd_moved = etcd_endpoints != ",".join(old_etcd.get("endpoints", []))

            private_path, public_path = d / "dev-private.pem", d / "dev-public.pem"
            if not private_path.exists() or not public_path.exists():
                private_path, public_path = devkeys.write_key_pair(d)
            admin_token = devkeys.mint_token(private_path.read_bytes(), sub=ADMIN_SUB, org_id=options.org_id,
                                             role="admin", ttl_s=7 * 24 * 3600)
            stack["jwt"] = {"private_key": str(private_path), "public_key": str(public_path),
                            "admin_token": admin_token, "issuer": devkeys.DEV_ISSUER,
                            "audience": devkeys.DEV_AUDIENCE, "org_id": options.org_id}
            jwt_flags = ["--jwt-public-key", str(public_path), "--jwt-issuer", devkeys.DEV_ISSUER,
                         "--jwt-audience", devkeys.DEV_AUDIENCE]
            prefix_flags = ["--etcd", etcd_endpoints, "--etcd-prefix", options.etcd_prefix]

            old_cp = previous.get("controlplane") or {}
            if not etcd_moved and _running(old_cp, lambda: grpc_serving(old_cp["address"])):
                kept.append("controlplane")
                cp_address = old_cp["address"]
            else:
                cp_address = f"127.0.0.1:{_same_or_free_port(old_cp.get('address'))}"
                launch(Child("controlplane", [_bin("tsplit-controlplane"), "--listen", cp_address, *prefix_flags,
                                              *jwt_flags],
                             lambda a=cp_address: grpc_serving(a), info={"address": cp_address}), "controlplane")

            old_gw = previous.get("gateway") or {}
            if cp_address == old_cp.get("address") and _running(old_gw, lambda: http_ok(f"{old_gw['url']}/healthz")):
                kept.append("gateway")
            else:
                gw_url = f"http://127.0.0.1:{_same_or_free_port(old_gw.get('url'))}"
                launch(Child("gateway", [_bin("tsplit-gateway"), "--listen", gw_url.removeprefix("http://"),
                                         "--controlplane", cp_address, *jwt_flags],
                             lambda u=gw_url: http_ok(f"{u}/healthz"), info={"url": gw_url}), "gateway")

            old_routers = list(previous.get("routers") or [])
            for surplus in old_routers[options.routers:]:
                if surplus.get("pid") and pid_alive(surplus["pid"]):
                    stop_pid(surplus["pid"])
                    log(f"stopped surplus router {surplus.get('router_id')} (pid {surplus['pid']})")
            stack["routers"] = old_routers[:options.routers] + [{}] * max(0, options.routers - len(old_routers))
            for i in range(options.routers):
                old = stack["routers"][i]
                if not etcd_moved and _running(old, lambda o=old: grpc_serving(o["address"])):
                    kept.append(old.get("router_id", f"r-{i + 1}"))
                    continue
                address = f"127.0.0.1:{_same_or_free_port(old.get('address'))}"
                metrics = f"127.0.0.1:{_same_or_free_port(old.get('metrics_url', '').removesuffix('/metrics'))}"
                router_id = f"r-{i + 1}"
                auth_flags = ["--auth", "jwt", *jwt_flags] if options.auth == "jwt" else []
                launch(Child(
                    f"router-{i + 1}", [_bin("tsplit-router"), "--listen", address, "--metrics-listen", metrics,
                                        "--router-id", router_id, "--workers", "1", *prefix_flags, *auth_flags],
                    lambda a=address: grpc_serving(a),
                    info={"router_id": router_id, "address": address, "http_url": f"http://{address}",
                          "metrics_url": f"http://{metrics}/metrics", "auth": options.auth}), "routers", i)

            old_models = {m.get("model_name"): m for m in previous.get("demo_models") or []}
            wanted = DEMO_MODELS if options.demo_models or old_models else ()
            stack["demo_models"] = [dict(old_models.get(name) or {"model_name": name}) for name, _, _ in wanted]
            for i, (name, weights, bias) in enumerate(wanted):
                old = stack["demo_models"][i]
                if _running(old, lambda o=old: grpc_serving(o["endpoint"])):
                    kept.append(f"model-{name}")
                    continue
                address = f"127.0.0.1:{_same_or_free_port(old.get('endpoint'))}"
                info = {k: v for k, v in old.items() if k == "model_id"}
                launch(Child(f"model-{name}", [_bin("tsplit-demo-model"), "--listen", address, "--model-name", name,
                                               "--weights", weights, "--bias", bias],
                             lambda a=address: grpc_serving(a), info={**info, "endpoint": address, "model_name": name}),
                       "demo_models", i)
            if kept:
                log(f"already running, kept: {', '.join(kept)}")
            _wait_healthy(started, logs, deadline)
            if stack["demo_models"]:
                stack["demo_models"] = reconcile_demo_models(cp_address, admin_token, stack["demo_models"], log)
            write_stack(d, stack)
            return stack, started
    except BaseException as err:
        why = f"interrupted ({err})" if isinstance(err, Interrupted) else "failed"
        if started:
            log(f"{why}: stopping the {len(started)} processes this `up` started")
        for child in reversed(started):
            if child.process is not None:
                stop_pid(child.process.pid)
        _forget_started(d, previous, started)
        raise


def _forget_started(directory: Path, previous: dict[str, Any], started: list[Child]) -> None:
    """After a failed up: stack.json lists only what still runs (the parts it kept)."""
    if previous and any(pid_alive(p) for p in _stack_pids(previous)):
        write_stack(directory, previous)
    else:
        (directory / "stack.json").unlink(missing_ok=True)


def reconcile_demo_models(cp_address: str, token: str, models: list[dict[str, Any]],
                          log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every demo model registered at its current endpoint: a known model_id whose endpoint
    moved is updated in place (PATCH model), so deployments naming it route to the new
    port; one missing from etcd is registered again under its id; a new one is registered
    as mod_<name> (mod_linear-a), so a tour can name it."""
    from google.protobuf import struct_pb2
    from tsplit.v1 import controlplane_pb2 as cp_pb, controlplane_pb2_grpc as cp_grpc

    def struct(data: dict[str, Any]) -> struct_pb2.Struct:
        body = struct_pb2.Struct()
        body.update(data)
        return body

    metadata = [("authorization", f"Bearer {token}")]
    out = []
    with grpc.insecure_channel(cp_address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        for info in models:
            wanted = {"endpoint": info["endpoint"], "model_name": info["model_name"]}
            model_id = info.get("model_id")
            current = None
            if model_id:
                try:
                    current = stub.GetModel(cp_pb.GetModelRequest(model_id=model_id), metadata=metadata, timeout=10)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise CliError(f"cannot read demo model {model_id}: {err.details()}") from None
            if current is None:
                # A new demo model gets a readable id (mod_linear-a) unless another org took it.
                body = {**wanted, "model_id": model_id or f"mod_{info['model_name']}"}
                try:
                    model = stub.RegisterModel(cp_pb.RegisterModelRequest(body=struct(body)), metadata=metadata,
                                               timeout=10)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.ALREADY_EXISTS or model_id:
                        raise CliError(f"cannot register demo model {info['model_name']}: {err.details()}") from None
                    model = stub.RegisterModel(cp_pb.RegisterModelRequest(body=struct(wanted)), metadata=metadata,
                                               timeout=10)
            elif (current.endpoint, current.model_name) != (wanted["endpoint"], wanted["model_name"]):
                model = stub.UpdateModel(cp_pb.UpdateModelRequest(model_id=model_id, body=struct(wanted)),
                                         metadata=metadata, timeout=10)
                log(f"model {model_id} ({info['model_name']}) moved to {info['endpoint']}: updated in place")
            else:
                model = current
            out.append({**info, "model_id": model.model_id})
    return out


def _stack_parts(stack: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    """(name, pid, start time) of every part in stack.json, in the order to stop them
    (clients of etcd first, etcd last)."""
    named = [(f"model-{m.get('model_name')}", m) for m in stack.get("demo_models", [])]
    named += [(f"router {r.get('router_id')}", r) for r in stack.get("routers", [])]
    named += [(part, stack.get(part) or {}) for part in ("gateway", "controlplane", "etcd")]
    return [(name, e["pid"], e.get("started")) for name, e in named if e.get("pid")]


def _stack_pids(stack: dict[str, Any]) -> list[int]:
    """Every pid in stack.json that is still the process it recorded."""
    return [pid for _, pid, started in _stack_parts(stack) if still_ours(pid, started)]


def down(directory: Path, log: Callable[[str], None]) -> int:
    """Stop every process stack.json lists; returns how many were running. A part that
    could not be stopped is named (CliError) and stack.json is kept so `down` can retry."""
    path = directory / "stack.json"
    if not path.exists():
        raise CliError(f"no stack in {directory} (no stack.json)")
    stack = json.loads(path.read_text())
    stopped, failed = 0, []
    for name, pid, started in _stack_parts(stack):
        if not pid_alive(pid):
            log(f"{name} (pid {pid}) was not running")
            continue
        if not still_ours(pid, started):  # it exited and the pid now names another process
            log(f"{name}: pid {pid} is no longer the stack's process; left alone")
            continue
        try:
            stop_pid(pid)
        except OSError as err:
            failed.append(f"{name} (pid {pid}): {err.strerror or err}")
            continue
        if pid_alive(pid):
            failed.append(f"{name} (pid {pid}): still running after SIGKILL")
        else:
            stopped += 1
            log(f"stopped {name} (pid {pid})")
    if failed:
        raise CliError(f"stopped {stopped}; could not stop {', '.join(failed)} (stack.json kept)")
    path.unlink()
    return stopped
