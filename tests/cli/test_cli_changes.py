"""The CLI's changes (SPEC section 7): each carries an idempotency key and, on commit_unknown
(or a call that ran out of time, whose outcome is unknown too), is sent again with the same
key until the control plane tells the outcome. A scripted control plane on a free port
answers what each test needs."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tsplit.cli import changes
from tsplit.cli.changes import ControlPlaneClient
from tsplit.cli.context import CliContext, CliError
from tsplit.errors import ERROR_METADATA_KEY, api_error_from_rpc_error
from tsplit.v1 import controlplane_pb2 as pb
from tsplit.v1 import controlplane_pb2_grpc as pb_grpc


class Scripted(pb_grpc.ControlPlaneServicer):
    """ManageTraffic answers from a script: "unknown" (commit_unknown), "slow" (past the
    caller's deadline), "ok"; every request is kept."""

    def __init__(self, script: list[str]):
        self.script, self.requests = list(script), []
        self.lock = threading.Lock()

    def ManageTraffic(self, request, context):
        with self.lock:
            self.requests.append(request)
            step = self.script.pop(0) if self.script else "ok"
        if step == "unknown":
            context.set_trailing_metadata(((ERROR_METADATA_KEY, "commit_unknown"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "etcd's answer was lost")
        if step == "slow":
            time.sleep(1.0)
        return pb.ManageTrafficResponse(deployment_id=request.deployment_id, action="toggle_shadow", cache_version=7)


@pytest.fixture
def scripted():
    servers = []

    def start(script: list[str]) -> tuple[Scripted, str]:
        servicer = Scripted(script)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_ControlPlaneServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def client(address: str) -> ControlPlaneClient:
    ctx = CliContext(directory=Path("."), etcd_endpoints=None, etcd_prefix="/tsplit", controlplane=address,
                     token="t", stack={})
    return ControlPlaneClient(ctx)


def test_a_change_carries_a_key_and_retries_commit_unknown_with_the_same_key(scripted, monkeypatch):
    monkeypatch.setattr(changes, "RETRY_PAUSE_S", 0.01)
    servicer, address = scripted(["unknown", "unknown", "ok"])
    with client(address) as cli:
        answer = cli.manage_traffic("dep_a", {"action": "toggle_shadow", "shadow_mode": True})
    assert answer.cache_version == 7
    keys = [r.request_id for r in servicer.requests]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1, keys


def test_a_change_that_times_out_is_retried_as_commit_unknown(scripted, monkeypatch):
    monkeypatch.setattr(changes, "RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(changes, "RPC_TIMEOUT_S", 0.3)
    servicer, address = scripted(["slow", "ok"])
    with client(address) as cli:
        assert cli.manage_traffic("dep_a", {"action": "toggle_shadow", "shadow_mode": True}).cache_version == 7
    assert len({r.request_id for r in servicer.requests}) == 1 and len(servicer.requests) == 2


def test_an_outcome_never_learned_is_reported_as_commit_unknown_with_its_key(scripted, monkeypatch):
    monkeypatch.setattr(changes, "RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(changes, "LEARN_OUTCOME_S", 0.3)
    servicer, address = scripted(["unknown"] * 1000)
    with client(address) as cli, pytest.raises(CliError) as err:
        cli.manage_traffic("dep_a", {"action": "toggle_shadow", "shadow_mode": True})
    assert str(err.value).startswith("commit_unknown") and servicer.requests[0].request_id in str(err.value)


class _Bare(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "Deadline Exceeded"

    def trailing_metadata(self):
        return ()


def test_deadline_exceeded_is_commit_unknown_for_a_change_and_unavailable_for_a_read():
    assert api_error_from_rpc_error(_Bare(grpc.StatusCode.DEADLINE_EXCEEDED), change=True).code == "commit_unknown"
    assert api_error_from_rpc_error(_Bare(grpc.StatusCode.DEADLINE_EXCEEDED)).code == "unavailable"
