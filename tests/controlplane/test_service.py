"""The gRPC control plane end to end: a real server on a free port over a real etcd.

Every RPC's happy path, the check order (401, 404, 403, 422), org isolation, error codes
in trailing metadata, the stored JSON as etcdctl shows it, health, reflection, settings
and the console script's start and graceful stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hypothesis import given, strategies as st

from controlplane.service import deployment_from_proto, deployment_to_proto, model_to_proto
from controlplane.settings import SettingsError, settings_from_args
from controlplane.store import ControlPlaneStore
from tsplit.etcd_server import find_etcd_binary
from tsplit.errors import ERROR_METADATA_KEY, ERRORS
from tsplit.resources import Challenger, Deployment, Model
from tsplit.v1 import controlplane_pb2 as pb

VENV_BIN = Path(sys.executable).parent


def struct(body: dict) -> Struct:
    message = Struct()
    message.update(body)
    return message


def error_code(err: grpc.aio.AioRpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get(ERROR_METADATA_KEY)


async def expect_error(call, code: str, *, in_details: str = ""):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert (err.code(), error_code(err)) == (ERRORS[code].grpc_code, code), err.details()
    assert in_details in err.details()
    assert "Traceback" not in err.details()
    return err


class Api:
    """A ControlPlane stub with a caller's token on every call."""

    def __init__(self, cp, **claims):
        self.stub, self.md = cp.stub(), cp.metadata(**claims)

    def __getattr__(self, method):
        rpc = getattr(self.stub, method)
        return lambda request, **kw: rpc(request, metadata=self.md, timeout=15, **kw)


async def seed(api: Api, slug="dep_svc") -> list[str]:
    ids = []
    for name in ("champ", "chal1", "chal2"):
        model = await api.RegisterModel(pb.RegisterModelRequest(
            body=struct({"endpoint": "127.0.0.1:9001", "model_name": name})))
        ids.append(model.model_id)
    await api.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": ids[0], "deployment_id": slug})))
    return ids



async def test_a_list_follows_every_change_and_delete_and_each_org_sees_its_own(controlplane, etcd):
    """ListDeployments keeps what it parsed and built while a deployment's etcd value is
    unchanged: a change, a create and a delete must show in the next list all the same."""
    api, other = Api(controlplane), Api(controlplane, org_id="org_2")
    champ, chal1, _ = await seed(api)
    await seed(other, slug="dep_other")

    async def listed(caller: Api) -> dict[str, tuple]:
        answer = await caller.ListDeployments(pb.ListDeploymentsRequest())
        return {d.deployment_id: (d.cache_version, [c.model_id for c in d.challengers if c.is_active])
                for d in answer.deployments}

    assert await listed(api) == await listed(api) == {"dep_svc": (1, [])}
    assert await listed(other) == {"dep_other": (1, [])}
    await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "add_challenger", "model_id": chal1, "traffic_pct": 10})))
    await api.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": champ, "deployment_id": "dep_two"})))
    assert await listed(api) == {"dep_svc": (2, [chal1]), "dep_two": (1, [])}
    await api.DeleteDeployment(pb.DeleteDeploymentRequest(deployment_id="dep_svc"))
    assert await listed(api) == {"dep_two": (1, [])}
    assert await listed(other) == {"dep_other": (1, [])}

async def test_models_register_get_list(controlplane):
    api = Api(controlplane)
    model = await api.RegisterModel(pb.RegisterModelRequest(
        body=struct({"endpoint": "127.0.0.1:9001", "model_name": "iris", "model_version": "2", "model_id": "mod_iris0001"})))
    assert (model.model_id, model.endpoint, model.model_name, model.model_version, model.org_id) == (
        "mod_iris0001", "127.0.0.1:9001", "iris", "2", "org_1")
    generated = await api.RegisterModel(pb.RegisterModelRequest(body=struct({"endpoint": "h:1", "model_name": "x"})))
    assert generated.model_id.startswith("mod_") and len(generated.model_id) == 12
    assert await api.GetModel(pb.GetModelRequest(model_id="mod_iris0001")) == model
    listed = await api.ListModels(pb.ListModelsRequest())
    assert sorted(m.model_id for m in listed.models) == sorted([model.model_id, generated.model_id])
    await expect_error(api.RegisterModel(pb.RegisterModelRequest(
        body=struct({"endpoint": "h:1", "model_name": "x", "model_id": "mod_iris0001"}))), "already_exists")
    await expect_error(api.RegisterModel(pb.RegisterModelRequest(
        body=struct({"endpoint": "no port", "model_name": "x"}))), "invalid_request", in_details="endpoint")
    await expect_error(api.GetModel(pb.GetModelRequest(model_id="mod_missing")), "model_not_found")


async def test_deployment_lifecycle_through_every_rpc(controlplane, etcd):
    api = Api(controlplane, sub="alice")
    champ, chal1, chal2 = await seed(api)
    got = await api.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_svc"))
    assert (got.cache_version, got.champion_model_id, got.org_id, got.updated_by) == (1, champ, "org_1", "alice")
    listed = await api.ListDeployments(pb.ListDeploymentsRequest())
    assert [d.deployment_id for d in listed.deployments] == ["dep_svc"]

    added = await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "add_challenger", "model_id": chal1, "traffic_pct": 10})))
    assert (added.deployment_id, added.action, added.cache_version, added.changed) == ("dep_svc", "add_challenger", 2, True)
    assert (added.challenger.model_id, added.challenger.traffic_pct, added.challenger.is_active) == (chal1, 10, True)
    assert not added.HasField("shadow_mode")
    ch_id = added.challenger.id
    updated = await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "update_traffic", "challenger_id": ch_id, "traffic_pct": 12.5})))
    assert (updated.challenger.traffic_pct, updated.cache_version) == (12.5, 3)
    shadow = await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "toggle_shadow", "shadow_mode": True})))
    assert shadow.HasField("shadow_mode") and shadow.shadow_mode and not shadow.HasField("challenger")
    removed = await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "remove_challenger", "challenger_id": ch_id})))
    assert (removed.challenger.is_active, removed.cache_version) == (False, 5)

    applied = await api.ApplyTraffic(pb.ApplyTrafficRequest(deployment_id="dep_svc", body=struct(
        {"champion": champ, "shadow_mode": False, "challengers": [{"model_id": chal2, "traffic_pct": 20}]})))
    assert applied.changed and applied.deployment.cache_version == 6
    assert [(c.model_id, c.traffic_pct, c.is_active) for c in applied.deployment.challengers] == [
        (chal1, 12.5, False), (chal2, 20, True)]
    again = await api.ApplyTraffic(pb.ApplyTrafficRequest(deployment_id="dep_svc", body=struct(
        {"champion": champ, "shadow_mode": False, "challengers": [{"model_id": chal2, "traffic_pct": 20}]})))
    assert (again.changed, again.deployment.cache_version) == (False, 6)

    rolled = await api.RollbackDeployment(pb.RollbackDeploymentRequest(
        deployment_id="dep_svc", body=struct({"to_version": 3})))
    assert rolled.changed and rolled.deployment.cache_version == 7
    assert [(c.model_id, c.traffic_pct, c.is_active) for c in rolled.deployment.challengers] == [
        (chal1, 12.5, True), (chal2, 20, False)]
    await expect_error(api.RollbackDeployment(pb.RollbackDeploymentRequest(
        deployment_id="dep_svc", body=struct({"to_version": 99}))), "invalid_request", in_details="to_version")

    history = await api.GetDeploymentHistory(pb.GetDeploymentHistoryRequest(deployment_id="dep_svc"))
    assert [(v.cache_version, v.action) for v in history.versions] == [
        (1, "create"), (2, "add_challenger"), (3, "update_traffic"), (4, "toggle_shadow"),
        (5, "remove_challenger"), (6, "apply"), (7, "rollback")]
    assert all(v.actor == "alice" and v.at and v.request_id for v in history.versions)
    assert json_format.MessageToDict(history.versions[2].request) == {
        "action": "update_traffic", "challenger_id": ch_id, "traffic_pct": 12.5}
    assert history.versions[-1].config == rolled.deployment

    status = await api.GetDeploymentStatus(pb.GetDeploymentStatusRequest(deployment_id="dep_svc"))
    assert (status.deployment_id, status.cache_version, list(status.routers)) == ("dep_svc", 7, [])
    assert [(v.variant, v.model_id) for v in status.variants] == [("champion", champ), (ch_id, chal1)]

    deleted = await api.DeleteDeployment(pb.DeleteDeploymentRequest(deployment_id="dep_svc"))
    assert deleted.deployment_id == "dep_svc"
    await expect_error(api.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_svc")), "deployment_not_found")
    kept = await api.GetDeploymentHistory(pb.GetDeploymentHistoryRequest(deployment_id="dep_svc"))
    assert len(kept.versions) == 7
    await expect_error(api.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": champ, "deployment_id": "dep_svc"}))), "already_exists")


async def test_create_generates_an_id_and_checks_the_champion(controlplane):
    api = Api(controlplane)
    champ, _, _ = await seed(api)
    created = await api.CreateDeployment(pb.CreateDeploymentRequest(body=struct({"champion_model_id": champ})))
    assert created.deployment_id.startswith("dep_") and created.cache_version == 1
    await expect_error(api.CreateDeployment(pb.CreateDeploymentRequest(
        body=struct({"champion_model_id": "mod_unknown1"}))), "invalid_request", in_details="champion_model_id")


async def test_check_order_token_then_org_then_role_then_body(controlplane):
    admin = Api(controlplane)
    await seed(admin)
    bad_body = struct({"action": "add_challenger", "trafic_pct": 10})
    request = pb.ManageTrafficRequest(deployment_id="dep_svc", body=bad_body)
    stub = controlplane.stub()
    await expect_error(stub.ManageTraffic(request, timeout=5), "unauthorized")
    await expect_error(stub.ManageTraffic(request, metadata=(("authorization", "Bearer not.a.jwt"),), timeout=5),
                       "unauthorized")
    expired = controlplane.metadata(ttl_s=-120)
    await expect_error(stub.ManageTraffic(request, metadata=expired, timeout=5), "unauthorized", in_details="expired")
    other_org_viewer = Api(controlplane, org_id="org_2", role="viewer")
    await expect_error(other_org_viewer.ManageTraffic(request), "deployment_not_found")
    viewer = Api(controlplane, role="viewer")
    await expect_error(viewer.ManageTraffic(request), "forbidden")
    await expect_error(viewer.DeleteDeployment(pb.DeleteDeploymentRequest(deployment_id="dep_svc")), "forbidden")
    await expect_error(viewer.RegisterModel(pb.RegisterModelRequest(body=struct({}))), "forbidden")
    await expect_error(admin.ManageTraffic(request), "invalid_traffic_config", in_details="trafic_pct")
    # Reads need any valid token of the org.
    assert (await viewer.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_svc"))).cache_version == 1


async def test_other_org_sees_nothing(controlplane):
    await seed(Api(controlplane))
    other = Api(controlplane, org_id="org_2")
    for call in (
        other.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_svc")),
        other.GetDeploymentHistory(pb.GetDeploymentHistoryRequest(deployment_id="dep_svc")),
        other.GetDeploymentStatus(pb.GetDeploymentStatusRequest(deployment_id="dep_svc")),
        other.DeleteDeployment(pb.DeleteDeploymentRequest(deployment_id="dep_svc")),
        other.RollbackDeployment(pb.RollbackDeploymentRequest(deployment_id="dep_svc", body=struct({"to_version": 1}))),
        other.GetDeployment(pb.GetDeploymentRequest(deployment_id="not a slug/../x")),
    ):
        await expect_error(call, "deployment_not_found")
    assert list((await other.ListDeployments(pb.ListDeploymentsRequest())).deployments) == []
    assert list((await other.ListModels(pb.ListModelsRequest())).models) == []


async def test_precondition_and_idempotent_retry(controlplane, etcd):
    api = Api(controlplane)
    _, chal1, _ = await seed(api)
    body = struct({"action": "add_challenger", "model_id": chal1, "traffic_pct": 10})
    revision = await etcd.revision()
    await expect_error(api.ManageTraffic(pb.ManageTrafficRequest(
        deployment_id="dep_svc", body=body, expected_cache_version=5)), "version_conflict")
    assert await etcd.revision() == revision
    request = pb.ManageTrafficRequest(deployment_id="dep_svc", body=body, expected_cache_version=1, request_id="k-1")
    first = await api.ManageTraffic(request)
    retry = await api.ManageTraffic(request)
    assert retry == first and first.cache_version == 2
    history = await api.GetDeploymentHistory(pb.GetDeploymentHistoryRequest(deployment_id="dep_svc"))
    assert [(v.cache_version, v.request_id) for v in history.versions][-1] == (2, "k-1")
    assert len(history.versions) == 2
    await expect_error(api.ManageTraffic(pb.ManageTrafficRequest(
        deployment_id="dep_svc", body=struct({"action": "toggle_shadow", "shadow_mode": True}), request_id="k-1")),
        "invalid_request", in_details="request_id")


async def test_stored_json_is_what_etcdctl_and_get_show(controlplane, etcd_endpoint):
    api = Api(controlplane)
    _, chal1, _ = await seed(api)
    await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id="dep_svc", body=struct(
        {"action": "add_challenger", "model_id": chal1, "traffic_pct": 12.25})))
    got = await api.GetDeployment(pb.GetDeploymentRequest(deployment_id="dep_svc"))
    out = subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", etcd_endpoint, "get", "--print-value-only",
         controlplane.layout.deployment("dep_svc")],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=10, check=True)
    stored = json.loads(out.stdout)
    assert stored["challengers"][0]["traffic_pct"] == 12.25 and stored["cache_version"] == 2
    assert Deployment.from_json(stored) == deployment_from_proto(got)
    assert stored == deployment_from_proto(got).to_json()


async def test_unexpected_errors_are_internal_without_details(controlplane, monkeypatch, caplog):
    async def broken(self, org_id):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(ControlPlaneStore, "list_models", broken)
    err = await expect_error(Api(controlplane).ListModels(pb.ListModelsRequest()), "internal")
    assert err.details() == "internal error"
    assert "secret internal detail" in caplog.text  # logged, not sent


async def test_health_and_reflection_need_no_token(controlplane):
    channel = grpc.aio.insecure_channel(controlplane.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tsplit.v1.ControlPlane"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {s.name for s in answer.list_services_response.service}
        assert {"tsplit.v1.ControlPlane", "grpc.health.v1.Health"} <= names
    finally:
        await channel.close()


def test_settings_flags_win_over_environment(tmp_path, dev_auth):
    env = {"TSPLIT_ETCD": "10.0.0.1:2379,10.0.0.2:2379", "TSPLIT_ETCD_PREFIX": "/env",
           "TSPLIT_JWT_PUBLIC_KEY": str(dev_auth.public_path), "TSPLIT_JWT_ISSUER": "iss-env",
           "TSPLIT_CONTROLPLANE_LISTEN": "127.0.0.1:7000"}
    from_env = settings_from_args([], env)
    assert from_env.etcd_endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert (from_env.etcd_prefix, from_env.listen, from_env.auth.issuer) == ("/env", "127.0.0.1:7000", "iss-env")
    flags = settings_from_args(["--etcd-prefix", "/flag", "--listen", "127.0.0.1:0", "--jwt-issuer", "iss-flag"], env)
    assert (flags.etcd_prefix, flags.listen, flags.auth.issuer) == ("/flag", "127.0.0.1:0", "iss-flag")


@pytest.mark.parametrize("argv, names", [
    ([], "--jwt-public-key"),
    (["--jwt-public-key", "/no/such/file.pem"], "--jwt-public-key"),
    (["--listen", "nowhere"], "--listen"),
    (["--etcd", "host-without-port"], "--etcd"),
    (["--etcd-prefix", "relative/"], "--etcd-prefix"),
    (["--grace", "soon"], "--grace"),
])
def test_settings_errors_name_the_flag(argv, names, dev_auth):
    key = [] if "--jwt-public-key" in argv or not argv else ["--jwt-public-key", str(dev_auth.public_path)]
    with pytest.raises(SettingsError) as err:
        settings_from_args(argv + key, {})
    assert names in str(err.value)


def test_console_script_serves_and_stops_on_sigterm(etcd_endpoint, dev_auth, tmp_path):
    process = subprocess.Popen(
        [str(VENV_BIN / "tsplit-controlplane"), "--listen", "127.0.0.1:0", "--etcd", etcd_endpoint,
         "--jwt-public-key", str(dev_auth.public_path)],
        stderr=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items() if not k.startswith("TSPLIT_")})
    try:
        deadline = time.monotonic() + 20
        line = ""
        while "listening on" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line or process.poll() is None, "the control plane exited early"
        assert "listening on 127.0.0.1:" in line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_console_script_reports_bad_settings():
    result = subprocess.run(
        [str(VENV_BIN / "tsplit-controlplane"), "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("TSPLIT_")})
    assert result.returncode == 2
    assert "--jwt-public-key" in result.stderr and "Traceback" not in result.stderr


_ids = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=12)
_challengers = st.builds(
    Challenger, id=_ids.map("ch_".__add__), model_id=_ids.map("mod_".__add__),
    traffic_bp=st.integers(100, 5000), is_active=st.booleans())
deployments = st.builds(
    Deployment, deployment_id=_ids.map("dep_".__add__), org_id=st.text(max_size=10),
    champion_model_id=_ids.map("mod_".__add__), challengers=st.lists(_challengers, max_size=5).map(tuple),
    shadow_mode=st.booleans(), cache_version=st.integers(1, 2**53), updated_at=st.text(max_size=20),
    updated_by=st.text(max_size=10))


@given(deployments)
def test_deployment_messages_round_trip_exactly(deployment):
    message = deployment_to_proto(deployment)
    assert deployment_from_proto(message) == deployment
    assert [round(c.traffic_pct * 100) for c in message.challengers] == [c.traffic_bp for c in deployment.challengers]


@given(st.builds(Model, model_id=_ids.map("mod_".__add__), endpoint=st.text(max_size=20),
                 model_name=st.text(max_size=20), model_version=st.text(max_size=5), org_id=st.text(max_size=5)))
def test_model_messages_carry_every_field(model):
    assert json_format.MessageToDict(model_to_proto(model), preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == model.to_json()


def test_idempotency_ttl_and_a_bare_port_from_flags_or_variables(dev_auth):
    key = ["--jwt-public-key", str(dev_auth.public_path)]
    assert settings_from_args(key, {}).store.idempotency_ttl_s == 24 * 3600
    flags = settings_from_args(key + ["--idempotency-ttl", "2h", "--listen", ":0"], {})
    assert (flags.store.idempotency_ttl_s, flags.listen) == (7200, "127.0.0.1:0")
    env = settings_from_args(key, {"TSPLIT_CONTROLPLANE_IDEMPOTENCY_TTL": "90m"})
    assert env.store.idempotency_ttl_s == 5400
    with pytest.raises(SettingsError) as err:
        settings_from_args(key, {"TSPLIT_CONTROLPLANE_IDEMPOTENCY_TTL": "forever"})
    assert "TSPLIT_CONTROLPLANE_IDEMPOTENCY_TTL" in str(err.value)
