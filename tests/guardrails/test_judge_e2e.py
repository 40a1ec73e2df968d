"""The guardrail judge end to end: real etcd, control planes (their judge), routers and demo
models with --error-rate and --latency-ms behind them, driven by real inference calls.

One run, four deployments side by side (under ~60 s on a loaded machine):
- dep_bad: a challenger with 5x the champion's error rate is rolled back, evidence in history;
- dep_slow: a challenger 500 ms slower than the champion is rolled back by the latency test;
- dep_step: an equal challenger steps 10 -> 20 after step_after_requests;
- dep_aa: an A/A challenger (same error rate, same latency) stays: no decision.

And two control-plane processes: one judges (it holds {prefix}/leader/guardrails); killed with
SIGKILL, the other takes over within the lease TTL and goes on stepping the challenger, and
no decision is ever made twice (each is revision-checked and carries a deterministic id).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct as binary
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf.struct_pb2 import Struct

from controlplane.guardrails.stats import replay_evidence
from dataplane.demo_server import DemoModel, start_demo_server
from dataplane.server import RouterSettings, start_router
from tsplit.etcd_server import free_port
from tsplit.inference import grpc_predict_v2_pb2 as infer_pb
from tsplit.inference import grpc_predict_v2_pb2_grpc as infer_grpc
from tsplit.protojson import struct_to_json
from tsplit.v1 import controlplane_pb2 as pb
from tsplit.v1 import controlplane_pb2_grpc as pb_grpc

WEIGHTS = ((1.0, 0.0), (0.0, 1.0))
BUDGET_S = 75.0


def struct(body: dict) -> Struct:
    message = Struct()
    message.update(body)
    return message


def infer_request(slug: str) -> infer_pb.ModelInferRequest:
    request = infer_pb.ModelInferRequest(model_name=slug)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(binary.pack("<2f", 0.3, 0.7))
    return request


async def _model(api, name: str, **options):
    server = await start_demo_server([DemoModel(name, weights=WEIGHTS, bias=(0.0, 0.0), **options)])
    model = await api.RegisterModel(pb.RegisterModelRequest(body=struct({"endpoint": server.address, "model_name": name})))
    return server, model.model_id


async def _deployment(api, slug: str, champion: str, challenger: str, pct: int, policy: dict) -> str:
    await api.CreateDeployment(pb.CreateDeploymentRequest(body=struct({"champion_model_id": champion,
                                                                        "deployment_id": slug})))
    added = await api.ManageTraffic(pb.ManageTrafficRequest(deployment_id=slug, body=struct(
        {"action": "add_challenger", "model_id": challenger, "traffic_pct": pct})))
    await api.SetGuardrails(pb.SetGuardrailsRequest(deployment_id=slug, body=struct(policy)))
    return added.challenger.id


class Api:
    def __init__(self, cp):
        self.stub, self.md = cp.stub(), cp.metadata()

    def __getattr__(self, method):
        rpc = getattr(self.stub, method)
        return lambda request: rpc(request, metadata=self.md, timeout=15)


async def _load(addresses, slugs, stop: asyncio.Event, sent: dict[str, int], per_slug: int = 4) -> None:
    sent.update(dict.fromkeys(slugs, 0))
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [infer_grpc.GRPCInferenceServiceStub(c) for c in channels]

    async def caller(i: int, slug: str) -> None:
        request, stub = infer_request(slug), stubs[i % len(stubs)]
        while not stop.is_set():
            try:
                await stub.ModelInfer(request, timeout=5)
            except grpc.aio.AioRpcError:
                pass  # the demo models' errors, on purpose
            sent[slug] += 1

    try:
        await asyncio.gather(*(caller(i, slug) for slug in slugs for i in range(per_slug)))
    finally:
        for channel in channels:
            await channel.close()


async def test_bad_challengers_are_rolled_back_a_good_one_steps_and_an_aa_one_stays(
        controlplane_factory, etcd_endpoint, layout):
    cp = await controlplane_factory(etcd_endpoint, layout)
    api = Api(cp)
    servers = []
    try:
        champion_server, champion = await _model(api, "champ", error_rate=0.02)
        bad_server, bad = await _model(api, "bad", error_rate=0.10)
        twin_server, twin = await _model(api, "twin", error_rate=0.02)
        slow_server, slow = await _model(api, "slow", latency_ms=500)
        servers = [champion_server, bad_server, twin_server, slow_server]
        no_steps = {"latency_quantile": None}
        ch_bad = await _deployment(api, "dep_bad", champion, bad, 20, no_steps)
        ch_slow = await _deployment(api, "dep_slow", champion, slow, 10, {"error_rate": False, "latency_quantile": 0.9})
        ch_step = await _deployment(api, "dep_step", champion, twin, 10,
                                    {"steps": [10, 20], "step_after_requests": 150, "latency_quantile": None})
        ch_aa = await _deployment(api, "dep_aa", champion, twin, 20, {"alpha": 0.01})  # every test on, no steps
        routers = [await start_router(RouterSettings(
            listen="127.0.0.1:0", etcd=etcd_endpoint, etcd_prefix=layout.prefix, shutdown_grace_s=0.2))
            for _ in range(2)]
        for router in routers:
            await asyncio.wait_for(router.sync.ready.wait(), 20)
        started = time.monotonic()
        stop = asyncio.Event()
        sent: dict[str, int] = {}
        load = asyncio.get_running_loop().create_task(
            _load([r.address for r in routers], ["dep_bad", "dep_slow", "dep_step", "dep_aa"], stop, sent))

        async def history(slug):
            return (await api.GetDeploymentHistory(pb.GetDeploymentHistoryRequest(deployment_id=slug))).versions

        async def decided(slug, action):
            return [v for v in await history(slug) if v.action == action]

        try:
            wanted = {("dep_bad", "guardrail_rollback"), ("dep_slow", "guardrail_rollback"),
                      ("dep_step", "guardrail_step")}
            found: dict = {}
            while len(found) < len(wanted) and time.monotonic() - started < BUDGET_S and not load.done():
                await asyncio.sleep(0.5)
                for slug, action in wanted - set(found):
                    entries = await decided(slug, action)
                    if entries:
                        found[(slug, action)] = entries
                        print(f"\n{slug} {action} after {time.monotonic() - started:.1f} s, sent {sent}")
            elapsed = time.monotonic() - started
            status_aa = await api.GetDeploymentStatus(pb.GetDeploymentStatusRequest(deployment_id="dep_aa"))
        finally:
            stop.set()
            await load
            for router in routers:
                await router.stop()
        print(f"\ndecisions after {elapsed:.1f} s; requests sent {sent}")
        assert set(found) == wanted, f"missing {wanted - set(found)} after {elapsed:.1f} s (sent {sent})"

        (rollback,) = found[("dep_bad", "guardrail_rollback")]
        assert rollback.actor == "guardrail" and rollback.request.fields["challenger_id"].string_value == ch_bad
        assert not [c for c in rollback.config.challengers if c.id == ch_bad][0].is_active
        evidence = struct_to_json(rollback.evidence)
        assert evidence["test"] == "error_rate" and evidence["alpha"] == 0.01
        assert evidence["statistic"] >= evidence["threshold"]
        low = evidence["confidence_interval"][0]
        assert low >= 1  # the always-valid interval excludes a challenger better than its champion
        replayed = replay_evidence(evidence)
        assert replayed.rejected and abs(replayed.statistic - evidence["statistic"]) < 1e-6
        challenger_requests = evidence["challenger"]["requests"]
        assert challenger_requests < 3000, challenger_requests  # within a few thousand requests
        print(f"rollback of the 5x-error challenger after {challenger_requests:.0f} of its requests, "
              f"ratio {evidence['estimate']:.2f} {list(evidence['confidence_interval'])}")

        (slow_rollback,) = found[("dep_slow", "guardrail_rollback")]
        assert struct_to_json(slow_rollback.evidence)["test"] == "latency"
        assert slow_rollback.request.fields["challenger_id"].string_value == ch_slow

        steps = found[("dep_step", "guardrail_step")]
        assert len(steps) == 1 and steps[0].request.fields["traffic_pct"].number_value == 20
        assert [c.traffic_pct for c in steps[0].config.challengers if c.id == ch_step] == [20]
        assert struct_to_json(steps[0].evidence)["requests_since_change"] >= 150

        assert not [v for v in await history("dep_aa") if v.actor == "guardrail"]
        (aa_row,) = [v for v in status_aa.variants if v.variant == ch_aa]
        guardrail = struct_to_json(aa_row.guardrail)
        assert guardrail["state"] == "watching" and guardrail["p_value"] > 0.01
        assert guardrail["requests_since_change"] > 0
        assert struct_to_json(status_aa.guardrails)["judge"].startswith("controlplane")
    finally:
        for server in servers:
            await server.stop()


CONTROLPLANE = str(Path(sys.executable).parent / "tsplit-controlplane")
LEASE_TTL_S = 5


def start_controlplane(port: int, etcd_endpoint: str, layout, dev_auth, logs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CONTROLPLANE, "--listen", f"127.0.0.1:{port}", "--etcd", etcd_endpoint, "--etcd-prefix", layout.prefix,
         "--jwt-public-key", str(dev_auth.public_path), "--jwt-issuer", dev_auth.issuer,
         "--jwt-audience", dev_auth.audience, "--grace", "0"],
        stdout=subprocess.DEVNULL, stderr=logs.open("ab"), stdin=subprocess.DEVNULL)


async def leader_pid(etcd, layout) -> int | None:
    kv = await etcd.get(layout.leader("guardrails"))
    return json.loads(kv.value)["pid"] if kv else None


async def wait_for(check, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(step)
    return None


async def test_a_killed_judge_is_replaced_within_its_lease_ttl_and_no_decision_is_made_twice(
        etcd, etcd_endpoint, layout, dev_auth, tmp_path):
    ports = [free_port(), free_port()]
    logs = tmp_path / "controlplanes.log"
    first = start_controlplane(ports[0], etcd_endpoint, layout, dev_auth, logs)
    processes = [first]
    servers, routers = [], []
    try:
        assert await wait_for(lambda: leader_pid(etcd, layout), 30) == first.pid, logs.read_text()[-2000:]
        second = start_controlplane(ports[1], etcd_endpoint, layout, dev_auth, logs)
        processes.append(second)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}")
        stub = pb_grpc.ControlPlaneStub(channel)
        md = (("authorization", f"Bearer {dev_auth.token()}"),)

        async def call(method, request):
            return await getattr(stub, method)(request, metadata=md, timeout=15, wait_for_ready=True)

        ids = []
        for name in ("champ", "twin"):
            server = await start_demo_server([DemoModel(name, weights=WEIGHTS, bias=(0.0, 0.0), error_rate=0.02)])
            servers.append(server)
            model = await call("RegisterModel", pb.RegisterModelRequest(
                body=struct({"endpoint": server.address, "model_name": name})))
            ids.append(model.model_id)
        await call("CreateDeployment", pb.CreateDeploymentRequest(
            body=struct({"champion_model_id": ids[0], "deployment_id": "dep_take"})))
        await call("ManageTraffic", pb.ManageTrafficRequest(deployment_id="dep_take", body=struct(
            {"action": "add_challenger", "model_id": ids[1], "traffic_pct": 10})))
        await call("SetGuardrails", pb.SetGuardrailsRequest(deployment_id="dep_take", body=struct(
            {"steps": [10, 20, 30, 40, 50], "step_after_requests": 40, "latency_quantile": None})))
        routers.append(await start_router(RouterSettings(
            listen="127.0.0.1:0", etcd=etcd_endpoint, etcd_prefix=layout.prefix, shutdown_grace_s=0.2)))
        await asyncio.wait_for(routers[0].sync.ready.wait(), 20)
        stop, sent = asyncio.Event(), {}
        load = asyncio.get_running_loop().create_task(_load([routers[0].address], ["dep_take"], stop, sent, 6))

        async def steps():
            history = await call("GetDeploymentHistory", pb.GetDeploymentHistoryRequest(deployment_id="dep_take"))
            return [v for v in history.versions if v.action == "guardrail_step"]

        try:
            assert await wait_for(steps, 40, 0.3), f"no step before the kill (sent {sent})"
            os.kill(first.pid, signal.SIGKILL)
            killed = time.monotonic()
            first.wait(10)
            assert await wait_for(lambda: _is(leader_pid(etcd, layout), second.pid), LEASE_TTL_S + 3, 0.05)
            takeover_s = time.monotonic() - killed
            before = len(await steps())
            assert await wait_for(lambda: _more(steps(), before), 40, 0.3), f"no step after the takeover (sent {sent})"
            history = (await call("GetDeploymentHistory",
                                  pb.GetDeploymentHistoryRequest(deployment_id="dep_take"))).versions
        finally:
            stop.set()
            await load
        await channel.close()
        print(f"\ntakeover {takeover_s:.2f} s after SIGKILL (lease TTL {LEASE_TTL_S} s); "
              f"{sum(v.action == 'guardrail_step' for v in history)} steps; sent {sent}")
        assert takeover_s <= LEASE_TTL_S + 1.0

        versions = [v.cache_version for v in history]
        assert versions == list(range(1, len(versions) + 1))  # one version each, none skipped
        decisions = [v for v in history if v.actor == "guardrail"]
        assert len({v.request_id for v in decisions}) == len(decisions)
        shares = [struct_to_json(v.request)["traffic_pct"] for v in decisions]
        assert shares == sorted(set(shares)) and shares[0] == 20, shares  # each step once, in order
        previous = {v.cache_version: v for v in history}
        for v in decisions:  # judged on the version it replaced
            (before_pct,) = [c.traffic_pct for c in previous[v.cache_version - 1].config.challengers if c.is_active]
            assert struct_to_json(v.evidence)["from_pct"] == before_pct
    finally:
        for router in routers:
            await router.stop()
        for server in servers:
            await server.stop()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


async def _is(value, expected):
    return (await value) == expected


async def _more(value, count):
    return len(await value) > count
