"""The proxyless client end to end: real etcd, real demo model servers, the generated OIP
v2 stub on its sync and aio channels."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

from dataplane.demo_server import DemoModel, start_demo_server
from dataplane.proxyless import ProxylessClient, ProxylessRpcError
from tsplit.etcd import Etcd
from tsplit.etcd_server import free_port
from tsplit.inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
from tsplit.resources import Challenger, Deployment, Model, dumps
from tsplit.router_record import read_records as read_router_records
from tsplit.status import summarize_deployment_status
from tsplit.v1 import controlplane_pb2 as cp_pb

TRANSPORTS = ["sync", "aio"]
# How a test calls: the sync or the aio channel of a client with its own loop thread, or
# the aio channel of a client made with start_in_loop() on the test's loop.
MODES = ["sync", "aio", "aio-in-loop"]


async def _caller(proxyless_factory, dp, mode: str, **options):
    client = await proxyless_factory(in_loop=mode == "aio-in-loop", **options)
    return client, dp.ProxylessCaller(client, "sync" if mode == "sync" else "aio")


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tsplit-proxyless-")]


@pytest.mark.parametrize("mode", MODES)
async def test_the_stub_is_routed_and_sees_the_variant_metadata(backends, proxyless_factory, dp, mode):
    a = await backends.demo_model("mod_a")
    b = await backends.demo_model("mod_b", weights=dp.WEIGHTS_B)
    await backends.deployment("dep_px", "mod_a", [("ch_b", "mod_b", 30)], cache_version=7)
    client, caller = await _caller(proxyless_factory, dp, mode)
    # The caller's model_version must not reach the backend (the demo server refuses
    # versions it does not have): the appended empty version overrides it.
    request = dp.infer_request("dep_px", rows=((0.9, 0.1), (0.2, 0.8)), version="9")
    response, md = await caller.infer(request, metadata=(("x-tsplit-variant", "champion"),))
    assert (md["tsplit-model-id"], md["tsplit-variant"], md["tsplit-cache-version"]) == ("mod_a", "champion", "7")
    assert response.model_name == a.model_name and response.id == "req-1"
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    response, md = await caller.infer(request, metadata=(("x-tsplit-variant", "ch_b"),))
    assert (md["tsplit-model-id"], md["tsplit-variant"], response.model_name) == ("mod_b", "ch_b", b.model_name)
    stats = client.stats_snapshot()["dep_px"]
    # Forced requests count in `forced` only (the guardrails read the other counters).
    assert (stats["champion"]["forced"], stats["ch_b"]["forced"]) == (1, 1)
    assert (stats["champion"]["ok"], stats["ch_b"]["ok"]) == (0, 0)


@pytest.mark.parametrize("mode", MODES)
async def test_the_callers_errors_are_the_routers(backends, proxyless_factory, dp, mode):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_err", "mod_a")
    _, caller = await _caller(proxyless_factory, dp, mode)
    cases = [
        (dp.infer_request("dep_missing"), (), grpc.StatusCode.NOT_FOUND, "dep_missing"),
        (dp.infer_request("dep_err"), (("x-tsplit-variant", "ch_nope"),), grpc.StatusCode.INVALID_ARGUMENT,
         "x-tsplit-variant 'ch_nope'"),
        (pb.ModelInferRequest(), (), grpc.StatusCode.INVALID_ARGUMENT, "model_name is required"),
    ]
    for request, metadata, code, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            await caller.infer(request, metadata)
        assert err.value.code() == code and says in err.value.details(), err.value


async def test_bytes_that_are_not_a_request_are_invalid_argument(backends, proxyless_factory):
    client = await proxyless_factory()
    raw_sync = client.channel().unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(ProxylessRpcError) as err:
        await asyncio.to_thread(raw_sync, b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in err.value.details()
    raw_aio = client.aio_channel().unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.aio.AioRpcError) as aio_err:
        await raw_aio(b"\x0a\x40dep_")
    assert aio_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_backend_errors_pass_through_with_the_variant(backends, proxyless_factory, dp, transport):
    await backends.demo_model("mod_bad", error_rate=1.0, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    await backends.deployment("dep_bad", "mod_bad")
    client = await proxyless_factory()
    with pytest.raises(grpc.RpcError) as err:
        await dp.ProxylessCaller(client, transport).infer(dp.infer_request("dep_bad"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.value.initial_metadata())["tsplit-variant"] == "champion"
    row = client.stats_snapshot()["dep_bad"]["champion"]
    assert (row["errors"], row["errors_by_code"]) == (1, {"RESOURCE_EXHAUSTED": 1})


@pytest.mark.parametrize("mode", MODES)
async def test_a_dead_challenger_fails_over_to_the_champion(backends, proxyless_factory, dp, mode):
    await backends.demo_model("mod_a")
    await backends.model("mod_dead", f"127.0.0.1:{free_port()}", "nothing-listens")
    await backends.deployment("dep_fo", "mod_a", [("ch_dead", "mod_dead", 50)])
    client, caller = await _caller(proxyless_factory, dp, mode)
    names = await caller.variants(dp.infer_request("dep_fo"), 40)
    assert names == ["champion"] * 40
    stats = client.stats_snapshot()["dep_fo"]
    # Random slots: half of them the dead challenger's (none in 40: p = 1e-12).
    assert stats["ch_dead"]["failovers"] > 0 and stats["ch_dead"]["requests"] == 0
    assert stats["champion"]["ok"] == 40
    forced = await caller.variants(dp.infer_request("dep_fo"), 3, metadata=(("x-tsplit-variant", "ch_dead"),))
    assert forced == ["champion"] * 3
    after = client.stats_snapshot()["dep_fo"]
    assert after["ch_dead"]["failovers"] == stats["ch_dead"]["failovers"] and after["champion"]["forced"] == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_model_and_server_methods(backends, proxyless_factory, dp, transport):
    a = await backends.demo_model("mod_a")
    await backends.deployment("dep_meta", "mod_a", cache_version=3)
    caller = dp.ProxylessCaller(await proxyless_factory(), transport)
    metadata, md = await caller.call("ModelMetadata", pb.ModelMetadataRequest(name="dep_meta"))
    assert metadata.name == "dep_meta" and [i.name for i in metadata.inputs] == ["input"]
    assert md["tsplit-model-id"] == "mod_a"
    ready, _ = await caller.call("ModelReady", pb.ModelReadyRequest(name="dep_meta"))
    assert ready.ready
    assert (await caller.call("ServerLive", pb.ServerLiveRequest()))[0].live
    assert (await caller.call("ServerReady", pb.ServerReadyRequest()))[0].ready
    server, _ = await caller.call("ServerMetadata", pb.ServerMetadataRequest())
    assert server.name == "tsplit-proxyless"
    with pytest.raises(grpc.RpcError) as err:
        await caller.call("ModelReady", pb.ModelReadyRequest(name="dep_nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "name 'dep_nope'" in err.value.details()
    assert a.model_name != "dep_meta"


async def test_future_and_streaming_methods_on_the_sync_channel(backends, proxyless_factory, dp):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_fut", "mod_a")
    channel = (await proxyless_factory()).channel()
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    future = stub.ModelInfer.future(dp.infer_request("dep_fut"), timeout=5)
    response = await asyncio.to_thread(future.result, 5)
    assert response.id == "req-1" and dict(future.initial_metadata())["tsplit-variant"] == "champion"
    assert future.code() == grpc.StatusCode.OK and future.done()
    failing = stub.ModelInfer.future(dp.infer_request("dep_nope"), timeout=5)
    assert (await asyncio.to_thread(failing.exception, 5)).code() == grpc.StatusCode.NOT_FOUND
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    with pytest.raises(grpc.RpcError) as err:
        stream(iter(()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "unary methods only" in err.value.details()


async def test_backend_channels_are_pooled_and_follow_the_config(backends, proxyless_factory, dp):
    a = await backends.demo_model("mod_a")
    b = await backends.demo_model("mod_b")
    await backends.deployment("dep_pool", "mod_a", [("ch_b", "mod_b", 50)])
    client = await proxyless_factory()
    sync, aio = dp.ProxylessCaller(client, "sync"), dp.ProxylessCaller(client, "aio")
    await sync.variants(dp.infer_request("dep_pool"), 40)
    await aio.variants(dp.infer_request("dep_pool"), 40)
    sync_backend = client._sync_pool.get(a.endpoint)
    await sync.variants(dp.infer_request("dep_pool"), 20)
    assert client._sync_pool.get(a.endpoint) is sync_backend   # reused, not one per call
    assert client._sync_pool.endpoints == {a.endpoint, b.endpoint}
    aio_pool = aio.stub.ModelInfer._channel._pool
    assert aio_pool.endpoints == {a.endpoint, b.endpoint}
    # The challenger leaves: its channels are retired, the champion's kept.
    await backends.deployment("dep_pool", "mod_a", cache_version=2)
    await dp.wait_until(lambda: client.applied_versions().get("dep_pool") == 2)
    await dp.wait_until(lambda: aio_pool.endpoints == {a.endpoint})
    assert client._sync_pool.endpoints == {a.endpoint}
    assert set(await aio.variants(dp.infer_request("dep_pool"), 10)) == {"champion"}


async def test_before_the_first_snapshot_calls_wait_then_fail_clearly(proxyless_factory, dp):
    silent = f"127.0.0.1:{free_port()}"   # nothing listens: no snapshot ever comes
    client = await proxyless_factory(wait=False, etcd=silent, wait_ready_s=1.0, report=False)
    assert not client.ready
    caller = dp.ProxylessCaller(client, "aio")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        await caller.infer(dp.infer_request("dep_x"))
    waited = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "proxyless client has no config yet" in err.value.details() and silent in err.value.details()
    assert 0.5 <= waited < 4.0
    # Past wait_ready_s, calls fail at once (no pile-up of waiting callers): well under the
    # 1 s a call that waited again would take, with room for a loaded host.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        await dp.ProxylessCaller(client, "sync").infer(dp.infer_request("dep_x"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 0.5
    ready, _ = await caller.call("ServerReady", pb.ServerReadyRequest())
    assert not ready.ready


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_call_made_at_once_waits_for_the_first_snapshot(backends, proxyless_factory, dp, transport):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_early", "mod_a")
    client = await proxyless_factory(wait=False, wait_ready_s=10)
    _, md = await dp.ProxylessCaller(client, transport).infer(dp.infer_request("dep_early"))
    assert md["tsplit-variant"] == "champion"


async def test_with_etcd_down_it_keeps_routing_by_the_last_config(etcd_private, layout, proxyless_factory, dp):
    async with Etcd(etcd_private.endpoint) as etcd:
        servers = [await start_demo_server([DemoModel(f"lin-{m}", weights=dp.WEIGHTS_A, bias=(0.0, 0.0))])
                   for m in ("a", "b")]
        try:
            for m, server in zip(("a", "b"), servers):
                await etcd.put(layout.model(f"mod_{m}"), dumps(Model(f"mod_{m}", server.address, f"lin-{m}",
                                                                      org_id="org_1").to_json()))
            await etcd.put(layout.deployment("dep_down"), dumps(Deployment(
                "dep_down", "org_1", "mod_a", (Challenger("ch_b", "mod_b", 5000),)).to_json()))
            client = await proxyless_factory(etcd=etcd_private.endpoint)
            callers = [dp.ProxylessCaller(client, t) for t in TRANSPORTS]
            etcd_private.stop()
            for caller in callers:
                assert set(await caller.variants(dp.infer_request("dep_down"), 40)) == {"champion", "ch_b"}
            etcd_private.start()
            await etcd.put(layout.deployment("dep_down"), dumps(Deployment(
                "dep_down", "org_1", "mod_b", (), cache_version=2).to_json()))
            await dp.wait_until(lambda: client.applied_versions().get("dep_down") == 2, timeout=15)
            for caller in callers:
                _, md = await caller.infer(dp.infer_request("dep_down"))
                assert (md["tsplit-model-id"], md["tsplit-cache-version"]) == ("mod_b", "2")
        finally:
            await asyncio.gather(*(s.stop(0) for s in servers), return_exceptions=True)


async def test_it_registers_as_a_client_and_the_status_counts_its_traffic(
        backends, etcd, etcd_endpoint, layout, proxyless_factory, controlplane, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    deployment = await backends.deployment("dep_reg", "mod_a", [("ch_b", "mod_b", 25)], cache_version=4)
    client = await proxyless_factory(client_id="svc-checkout-1")
    names = await dp.ProxylessCaller(client, "sync").variants(dp.infer_request("dep_reg"), 30)
    names += await dp.ProxylessCaller(client, "aio").variants(dp.infer_request("dep_reg"), 30)
    expected = {"champion": names.count("champion"), "ch_b": names.count("ch_b")}

    async def counted() -> int:
        summary = summarize_deployment_status(deployment, await read_router_records(etcd, layout))
        return sum(v["requests"] for v in summary["variants"])

    deadline = time.monotonic() + 5
    while await counted() < 60 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # The control plane's status route (GET /v1/deployments/{slug}/status behind the gateway).
    status = await controlplane.stub().GetDeploymentStatus(
        cp_pb.GetDeploymentStatusRequest(deployment_id="dep_reg"), metadata=controlplane.metadata(), timeout=5)
    assert [(r.router_id, r.kind, r.applied_cache_version) for r in status.routers] == [("svc-checkout-1", "client", 4)]
    assert {v.variant: v.requests for v in status.variants} == expected
    # The CLI (the ops path, straight from etcd): `tsplit get` and `tsplit routers`.
    for command in (["get", "dep_reg"], ["routers"]):
        out = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "tsplit.cli.main", *command, "--json", "--etcd", etcd_endpoint,
            "--etcd-prefix", layout.prefix], capture_output=True, text=True, timeout=30,
            env={**os.environ, "TSPLIT_DIR": "/nonexistent-tsplit-dir"})
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        if command[0] == "get":
            [entry] = shown["deployments"]
            assert {v["variant"]: v["requests"] for v in entry["status"]["variants"]} == expected
            assert entry["status"]["routers"][0]["kind"] == "client"
        else:
            [record] = shown["routers"]
            assert (record["router_id"], record["kind"], record["applied"]) == ("svc-checkout-1", "client", {"dep_reg": 4})


async def test_close_releases_the_watch_the_lease_and_the_channels(backends, etcd, layout, proxyless_factory, dp):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_close", "mod_a")
    before = set(_loop_threads())
    client = await proxyless_factory(client_id="c-closing")
    sync, aio = dp.ProxylessCaller(client, "sync"), dp.ProxylessCaller(client, "aio")
    await sync.infer(dp.infer_request("dep_close"))
    await aio.infer(dp.infer_request("dep_close"))
    await dp.wait_until(lambda: client.registration.writes > 0)
    assert (await etcd.get(layout.router("c-closing"))) is not None
    aio_pool = aio.stub.ModelInfer._channel._pool
    assert len(set(_loop_threads()) - before) == 1

    await client.aclose()
    assert await etcd.get(layout.router("c-closing")) is None       # lease revoked: the record is gone at once
    assert set(_loop_threads()) - before == set()                   # the watch's loop and thread are gone
    assert client._sync_pool.closed and not client._sync_pool.endpoints
    assert aio.stub.ModelInfer._channel._pool is None and not aio_pool.endpoints
    with pytest.raises(grpc.RpcError) as err:
        await sync.infer(dp.infer_request("dep_close"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "closed" in err.value.details()
    with pytest.raises(RuntimeError, match="closed"):
        client.channel()
    await client.aclose()   # idempotent


async def test_a_client_in_the_callers_loop_has_no_thread_and_closes_there(backends, etcd, layout, proxyless_factory,
                                                                            dp):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_home", "mod_a")
    before = set(_loop_threads())
    client = await proxyless_factory(in_loop=True, client_id="c-in-loop")
    assert set(_loop_threads()) == before                           # no thread of its own
    _, md = await dp.ProxylessCaller(client, "aio").infer(dp.infer_request("dep_home"))
    assert md["tsplit-variant"] == "champion"
    _, md = await dp.ProxylessCaller(client, "sync").infer(dp.infer_request("dep_home"))   # from a thread
    assert md["tsplit-variant"] == "champion"
    await dp.wait_until(lambda: client.registration.writes > 0)
    with pytest.raises(RuntimeError, match="aclose"):
        client.close()                                              # would block its own loop
    await client.aclose()
    assert await etcd.get(layout.router("c-in-loop")) is None
    assert client._sync_pool.closed


def test_a_sync_program_uses_it_without_an_event_loop(etcd_endpoint, layout):
    """No asyncio anywhere in the caller: a plain script with a context manager."""
    with ProxylessClient(etcd_endpoint, layout.prefix, report=False, wait_ready_s=5) as client:
        assert client.wait_ready(10)
        stub = pb_grpc.GRPCInferenceServiceStub(client.channel())
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(pb.ModelInferRequest(model_name="dep_none"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.closed and not _loop_threads_of(client)


def _loop_threads_of(client: ProxylessClient) -> list[threading.Thread]:
    return [t for t in _loop_threads() if t.name.endswith(client.client_id)]
