"""tsplit's own processes for the bench: routers, the control plane and the REST gateway,
each started from its console script with explicit flags, and whether each is built yet."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import Child, wait_for_listen
from tsplit import devkeys
from tsplit.etcd_server import free_port

ROUTER_MODULE = "dataplane.server"
CONTROLPLANE_MODULE = "controlplane.server"
GATEWAY_MODULE = "controlplane.gateway.server"


def built(module: str) -> bool:
    """True once another developer's part has landed (its module imports)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


_help: list[str] = []


def router_help() -> str:
    """`tsplit-router --help` (read once a run); "" when the router is not built."""
    if not _help:
        _help.append(subprocess.run([script("tsplit-router"), "--help"], capture_output=True, text=True,
                                    timeout=30).stdout if built(ROUTER_MODULE) else "")
    return _help[0]


def router_supports(flag: str) -> bool:
    return flag in router_help()


def router_supports_workers() -> bool:
    return router_supports("--workers")


@dataclass
class RouterProcess:
    child: Child
    address: str
    metrics: str
    router_id: str


def start_router(work_dir: Path, etcd: str, prefix: str, router_id: str, workers: int = 0,
                 wait_listen: bool = True, timeout: float = 30.0, extra: tuple[str, ...] = ()) -> RouterProcess:
    port, metrics = free_port(), free_port()
    cmd = [script("tsplit-router"), "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
           "--etcd", etcd, "--etcd-prefix", prefix, "--router-id", router_id]
    if workers:
        cmd += ["--workers", str(workers)]
    cmd += list(extra)
    child = Child(f"router {router_id}", cmd, work_dir / f"router-{router_id}.log").start()
    if wait_listen:
        wait_for_listen(child, port, timeout)
    return RouterProcess(child, f"127.0.0.1:{port}", f"127.0.0.1:{metrics}", router_id)


@dataclass
class ControlStack:
    """A control plane and a REST gateway in front of it, and an admin token of the bench org."""

    controlplane: Child
    gateway: Child
    controlplane_address: str
    gateway_url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.gateway.stop()
        self.controlplane.stop()


def start_control_stack(work_dir: Path, etcd: str, prefix: str, org_id: str, name: str = "cp",
                        timeout: float = 30.0) -> ControlStack:
    keys = work_dir / "keys"
    if not (keys / "dev-private.pem").exists():
        devkeys.write_key_pair(keys)
    private, public = keys / "dev-private.pem", keys / "dev-public.pem"
    jwt_flags = ["--jwt-public-key", str(public), "--jwt-issuer", devkeys.DEV_ISSUER,
                 "--jwt-audience", devkeys.DEV_AUDIENCE]
    cp_port, gw_port = free_port(), free_port()
    cp = Child(f"controlplane {name}", [script("tsplit-controlplane"), "--listen", f"127.0.0.1:{cp_port}",
                                        "--etcd", etcd, "--etcd-prefix", prefix, *jwt_flags],
               work_dir / f"controlplane-{name}.log").start()
    gw = Child(f"gateway {name}", [script("tsplit-gateway"), "--listen", f"127.0.0.1:{gw_port}",
                                   "--controlplane", f"127.0.0.1:{cp_port}", *jwt_flags],
               work_dir / f"gateway-{name}.log").start()
    token = devkeys.mint_token(private.read_bytes(), sub="bench", org_id=org_id, role="admin", ttl_s=6 * 3600)
    stack = ControlStack(cp, gw, f"127.0.0.1:{cp_port}", f"http://127.0.0.1:{gw_port}", token)
    try:
        wait_for_listen(cp, cp_port, timeout)
        wait_for_listen(gw, gw_port, timeout)
        wait_http_ok(f"{stack.gateway_url}/openapi.json", timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_http_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
