"""The router end to end: real etcd, real demo model servers, a real router, the generated
OIP v2 stub as the client."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dataplane.server import RouterSettings, parse_settings, start_router
from dataplane.stats import RouterStats
from tsplit.etcd_server import EtcdMember, free_port
from tsplit.inference import grpc_predict_v2_pb2 as pb
from tsplit.status import LATENCY_BUCKETS_MS


async def test_split_shares_are_within_the_binomial_bound(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.demo_model("mod_c")
    await backends.deployment("dep_split", "mod_a", [("ch_b", "mod_b", 20), ("ch_c", "mod_c", 5)])
    await dp.wait_for_version(router, "dep_split", 1)
    n = 3000
    counts = collections.Counter(await client_factory(router.address).variants(dp.infer_request("dep_split"), n))
    for variant, share in (("champion", 0.75), ("ch_b", 0.20), ("ch_c", 0.05)):
        assert abs(counts[variant] - n * share) <= dp.binomial_bound(n, share), counts
    stats = router.stats.snapshot()["dep_split"]
    assert {v: row["ok"] for v, row in stats.items()} == dict(counts)


async def test_a_routing_key_is_sticky_on_every_router(backends, router_factory, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_sticky", "mod_a", [("ch_b", "mod_b", 50)])
    routers = [await router_factory(), await router_factory()]
    clients = [client_factory(r.address) for r in routers]
    chosen: dict[str, set[str]] = collections.defaultdict(set)
    for i in range(40):
        key = f"user-{i}"
        for client in clients:
            names = await client.variants(dp.infer_request("dep_sticky"), 3, metadata=(("x-routing-key", key),))
            chosen[key].update(names)
    assert all(len(names) == 1 for names in chosen.values()), chosen
    assert {name for names in chosen.values() for name in names} == {"champion", "ch_b"}


async def test_a_forced_variant_answers_and_an_unknown_one_is_refused(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    b = await backends.demo_model("mod_b")
    await backends.deployment("dep_forced", "mod_a", [("ch_b", "mod_b", 1)])
    await dp.wait_for_version(router, "dep_forced", 1)
    client = client_factory(router.address)
    names = await client.variants(dp.infer_request("dep_forced"), 30, metadata=(("x-tsplit-variant", "ch_b"),))
    assert set(names) == {"ch_b"}
    response, _ = await client.infer(dp.infer_request("dep_forced"), metadata=(("x-tsplit-variant", "ch_b"),))
    assert response.model_name == b.model_name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(dp.infer_request("dep_forced"), metadata=(("x-tsplit-variant", "ch_nope"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ch_nope" in err.value.details() and "x-tsplit-variant" in err.value.details()


@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
async def test_the_backend_answer_comes_back_with_the_variant_metadata(backends, router, client_factory, dp, raw):
    a = await backends.demo_model("mod_a")
    await backends.deployment("dep_meta", "mod_a", cache_version=7)
    await dp.wait_for_version(router, "dep_meta", 7)
    # The client's model_version must not reach the backend (the demo server refuses
    # versions it does not have): the router's appended empty version overrides it.
    request = dp.infer_request("dep_meta", rows=((0.9, 0.1), (0.2, 0.8)), raw=raw, version="9")
    response, metadata = await client_factory(router.address).infer(request)
    assert (metadata["tsplit-model-id"], metadata["tsplit-variant"], metadata["tsplit-cache-version"]) == (
        "mod_a", "champion", "7")
    assert response.model_name == a.model_name and response.id == "req-1"
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    assert bool(response.raw_output_contents) == raw


async def test_a_config_change_is_routed_by_at_once(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_change", "mod_a")
    await dp.wait_for_version(router, "dep_change", 1)
    client = client_factory(router.address)
    assert set(await client.variants(dp.infer_request("dep_change"), 20)) == {"champion"}
    await backends.deployment("dep_change", "mod_b", cache_version=2)
    await dp.wait_for_version(router, "dep_change", 2)
    _, metadata = await client.infer(dp.infer_request("dep_change"))
    assert (metadata["tsplit-model-id"], metadata["tsplit-cache-version"]) == ("mod_b", "2")
    assert router.stats.snapshot()["dep_change"]["champion"]["requests"] == 21

    await backends.etcd.delete(backends.layout.deployment("dep_change"))
    await dp.wait_until(lambda: "dep_change" not in router.sync.applied_versions())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(dp.infer_request("dep_change"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "dep_change" not in router.stats.snapshot()  # a deleted deployment's counters go


async def test_unknown_deployment_is_not_found(router, client_factory, dp):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client_factory(router.address).infer(dp.infer_request("dep_missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "dep_missing" in err.value.details()


@pytest.mark.parametrize("raw, says", [
    (b"\xff\xff\xff", "not a valid message"),
    (b"\x0a\x40dep_", "not a valid message"),                 # truncated model_name
    (b"\x0a\x02\xc3\x28", "not a valid message"),             # model_name not UTF-8
    (b"", "model_name is required"),
    (pb.ModelInferRequest(id="x").SerializeToString(), "model_name is required"),
])
async def test_malformed_requests_are_invalid_argument_and_harmless(backends, router, client_factory, dp, raw, says):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_ok", "mod_a")
    await dp.wait_for_version(router, "dep_ok", 1)
    client = client_factory(router.address)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.raw_infer(raw, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.value.details()
    _, metadata = await client.infer(dp.infer_request("dep_ok"))
    assert metadata["tsplit-variant"] == "champion"


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
async def test_backend_errors_pass_through_unchanged(backends, router, client_factory, dp, code):
    model = await backends.demo_model("mod_err", error_rate=1.0, error_code=code)
    await backends.deployment("dep_err", "mod_err")
    await dp.wait_for_version(router, "dep_err", 1)
    direct = client_factory(model.endpoint)
    with pytest.raises(grpc.aio.AioRpcError) as expected:
        await direct.infer(dp.infer_request(model.model_name))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client_factory(router.address).infer(dp.infer_request("dep_err"))
    assert (err.value.code(), err.value.details()) == (expected.value.code(), expected.value.details()) == (
        code, expected.value.details())
    row = router.stats.snapshot()["dep_err"]["champion"]
    assert (row["requests"], row["errors"], row["errors_by_code"]) == (1, 1, {code.name: 1})


async def test_a_backend_not_found_passes_through(backends, router, client_factory, dp):
    endpoint = await backends.start("lin-real")
    await backends.model("mod_typo", endpoint, "lin-typo")
    await backends.deployment("dep_typo", "mod_typo")
    await dp.wait_for_version(router, "dep_typo", 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client_factory(router.address).infer(dp.infer_request("dep_typo"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "lin-typo" in err.value.details()


async def test_the_clients_deadline_reaches_the_backend(backends, router, client_factory, dp):
    await backends.demo_model("mod_slow", latency_ms=2000)
    await backends.deployment("dep_slow", "mod_slow")
    await dp.wait_for_version(router, "dep_slow", 1)
    client = client_factory(router.address)
    await asyncio.wait_for(client.channel.channel_ready(), 10)   # the call, not the connection, runs out of time
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.infer(dp.infer_request("dep_slow"), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 1.5
    # Counted once the router's own deadline (a transit time after the client's) ends the call.
    await dp.wait_until(lambda: router.stats.snapshot().get("dep_slow", {}).get("champion", {}).get("errors") == 1)
    assert router.stats.snapshot()["dep_slow"]["champion"]["errors_by_code"] == {"DEADLINE_EXCEEDED": 1}


async def test_a_dead_challenger_fails_over_to_the_champion(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.model("mod_dead", f"127.0.0.1:{free_port()}", "lin-dead")
    await backends.deployment("dep_failover", "mod_a", [("ch_dead", "mod_dead", 50)])
    await dp.wait_for_version(router, "dep_failover", 1)
    client = client_factory(router.address)
    n = 200
    names = await client.variants(dp.infer_request("dep_failover"), n)
    assert set(names) == {"champion"}
    _, metadata = await client.infer(dp.infer_request("dep_failover"), metadata=(("x-tsplit-variant", "ch_dead"),))
    assert (metadata["tsplit-variant"], metadata["tsplit-model-id"]) == ("champion", "mod_a")
    stats = router.stats.snapshot()["dep_failover"]
    # The forced request counts in `forced` only, its failover in no other counter.
    assert stats["champion"]["ok"] == n and stats["champion"]["forced"] == 1
    assert stats["ch_dead"]["requests"] == 0
    failovers = stats["ch_dead"]["failovers"]
    assert abs(failovers - n / 2) <= dp.binomial_bound(n, 0.5)


async def test_calls_go_on_while_a_model_server_rotates_its_connections(backends, router, client_factory, dp):
    # A server with a maximum connection age sends GOAWAY every 200 ms while calls are in
    # flight on the connection: those finish on it, new ones must go to a new connection.
    rotating = (("grpc.max_connection_age_ms", 200), ("grpc.max_connection_age_grace_ms", 10_000))
    await backends.model("mod_rot", await backends.start("lin-rot", latency_ms=20, options=rotating), "lin-rot")
    await backends.deployment("dep_rot", "mod_rot")
    await dp.wait_for_version(router, "dep_rot", 1)
    client = client_factory(router.address)
    request, codes = dp.infer_request("dep_rot"), []

    async def caller() -> None:  # calls back to back: some always in flight
        for _ in range(40):  # ~1 s at 20 ms a call: 5 rotations
            try:
                await client.infer(request)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())

    await asyncio.gather(*(caller() for _ in range(8)))
    assert codes.count(grpc.StatusCode.OK) == 320, collections.Counter(codes)


async def test_health_and_readiness_follow_the_first_snapshot(tmp_path, client_factory, dp):
    member = EtcdMember(data_dir=tmp_path / "etcd")  # not started yet: no snapshot possible
    router = await start_router(RouterSettings(listen="127.0.0.1:0", etcd=member.endpoint,
                                               etcd_prefix="/t-health", shutdown_grace_s=0.2))
    try:
        client = client_factory(router.address)
        health = health_pb2_grpc.HealthStub(client.channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not (await client.stub.ServerReady(pb.ServerReadyRequest(), timeout=2)).ready
        assert (await client.stub.ServerLive(pb.ServerLiveRequest(), timeout=2)).live
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(dp.infer_request("dep_x"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "configuration" in err.value.details()
        member.start()
        await asyncio.wait_for(router.sync.ready.wait(), 15)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert (await client.stub.ServerReady(pb.ServerReadyRequest(), timeout=2)).ready
    finally:
        await router.stop(0.2)
        member.stop()


async def test_model_and_server_metadata(backends, router, client_factory, dp):
    a = await backends.demo_model("mod_a")
    await backends.deployment("dep_md", "mod_a")
    await dp.wait_for_version(router, "dep_md", 1)
    stub = client_factory(router.address).stub
    direct = await client_factory(a.endpoint).stub.ModelMetadata(pb.ModelMetadataRequest(name=a.model_name))
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="dep_md"), timeout=5)
    assert metadata.name == "dep_md"
    assert (list(metadata.inputs), list(metadata.outputs), metadata.platform) == (
        list(direct.inputs), list(direct.outputs), direct.platform)
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="dep_md"), timeout=5)).ready
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelReady(pb.ModelReadyRequest(name="dep_nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert server.name == "tsplit-router" and server.version


async def test_metrics_and_the_router_record_show_the_same_counters(backends, etcd, layout, router_factory,
                                                                    client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_metrics", "mod_a", [("ch_b", "mod_b", 30)])
    router = await router_factory(metrics_listen="127.0.0.1:0")
    await dp.wait_for_version(router, "dep_metrics", 1)
    n = 300
    counts = collections.Counter(await client_factory(router.address).variants(dp.infer_request("dep_metrics"), n))

    body = await asyncio.to_thread(lambda: urllib.request.urlopen(router.metrics_url, timeout=5).read().decode())
    samples = {
        (s.name, s.labels.get("variant"), s.labels.get("le")): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
        if s.labels.get("deployment") == "dep_metrics"}
    for variant in ("champion", "ch_b"):
        assert samples[("tsplit_router_requests_total", variant, None)] == counts[variant]
        assert samples[("tsplit_router_request_duration_seconds_count", variant, None)] == counts[variant]
        assert samples[("tsplit_router_request_duration_seconds_bucket", variant, "+Inf")] == counts[variant]
    assert len([k for k in samples if k[0].endswith("_bucket") and k[1] == "champion"]) == len(LATENCY_BUCKETS_MS) + 1

    async def record() -> dict:
        kv = await etcd.get(layout.router(router.router_id))
        return json.loads(kv.value) if kv else {}

    deadline = asyncio.get_running_loop().time() + 5
    while (await record()).get("stats", {}).get("dep_metrics", {}).get("champion", {}).get("requests") != counts["champion"]:
        assert asyncio.get_running_loop().time() < deadline, await record()
        await asyncio.sleep(0.1)
    rec = await record()
    assert rec["applied"]["dep_metrics"] == 1 and rec["metrics_url"] == router.metrics_url
    assert rec["address"] == router.address
    assert rec["stats"]["dep_metrics"]["ch_b"]["ok"] == counts["ch_b"]


def test_stats_rows_hold_the_record_format():
    stats = RouterStats()
    row = stats.variant("dep_x", "champion", "mod_a")
    row.answered(0.1)
    row.answered(LATENCY_BUCKETS_MS[-1] * 2, "UNAVAILABLE")
    stats.variant("dep_x", "ch_1", "mod_b").compared_pair(True, 3, 4, 0.5, 8)
    snapshot = stats.snapshot()
    champion = snapshot["dep_x"]["champion"]
    assert (champion["requests"], champion["ok"], champion["errors"], champion["errors_by_code"]) == (
        2, 1, 1, {"UNAVAILABLE": 1})
    assert champion["latency_buckets"][0] == 1 and champion["latency_buckets"][-1] == 1
    assert len(champion["latency_buckets"]) == len(LATENCY_BUCKETS_MS) + 1
    challenger = snapshot["dep_x"]["ch_1"]
    assert (challenger["compared"], challenger["exact_matches"], challenger["label_agree"],
            challenger["label_total"], challenger["abs_diff_sum"], challenger["abs_diff_count"]) == (1, 1, 3, 4, 0.5, 8)
    assert set(champion) == set(challenger) == {
        "model_id", "requests", "ok", "errors", "errors_by_code", "latency_ms_sum", "latency_buckets",
        "failovers", "mirrored", "mirror_dropped", "mirror_errors", "mirror_latency_ms_sum", "compared",
        "exact_matches", "label_agree", "label_total", "abs_diff_sum", "abs_diff_count",
        "forced", "forced_errors", "mirror_answers", "mirror_latency_buckets"}
    json.dumps(snapshot, allow_nan=False)


def test_settings_come_from_flags_then_environment_then_defaults():
    env = {"TSPLIT_ETCD": "10.0.0.1:2379,10.0.0.2:2379", "TSPLIT_ROUTER_LISTEN": "127.0.0.1:9000",
           "TSPLIT_ROUTER_MAX_INFLIGHT_MIRRORS": "64"}
    settings = parse_settings(["--listen", ":0", "--workers", "3", "--metrics-listen", "127.0.0.1:0"], env)
    assert settings == RouterSettings(listen="127.0.0.1:0", etcd="10.0.0.1:2379,10.0.0.2:2379", workers=3,
                                      metrics_listen="127.0.0.1:0", max_inflight_mirrors=64)
    assert parse_settings([], {}) == RouterSettings()
    assert RouterSettings().router_id == "" and RouterSettings().router_id_or_new().startswith("r-")


@pytest.mark.parametrize("argv, says", [
    (["--listen", "nowhere"], "--listen"),
    (["--workers", "0"], "--workers"),
    (["--workers", "two"], "--workers"),
    (["--etcd-prefix", "tsplit/"], "prefix"),
    (["--etcd", ""], "etcd"),
    (["--mirror-timeout", "-1"], "--mirror-timeout"),
    (["--router-id", "a/b"], "--router-id"),
    (["--threads", "-1"], "--threads"),
    (["--backend-connections", "0"], "--backend-connections"),
    (["--server", "aio"], "--server"),   # one router now: the flag that chose a grpcio server is gone
])
def test_bad_settings_exit_with_a_message_naming_the_flag(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_:
        parse_settings(argv, {})
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_workers_and_threads_auto_are_one_per_usable_cpu():
    cpus = len(os.sched_getaffinity(0))
    assert parse_settings(["--workers", "auto"]).workers == cpus
    assert parse_settings([], {"TSPLIT_ROUTER_WORKERS": "AUTO"}).workers == cpus
    assert parse_settings(["--workers", "3"]).workers == 3 and parse_settings([]).workers == 1
    # --threads 0 / auto: the core starts one runtime per CPU (divided among the workers).
    assert parse_settings(["--threads", "auto"]).threads == 0 == parse_settings([]).threads
    assert parse_settings(["--threads", "3"]).threads == 3


async def _peer_recording_backend() -> tuple[grpc.aio.Server, str, list[str]]:
    """A v2 backend that answers every ModelInfer and records the caller's peer (its TCP
    connection's address and port)."""
    peers: list[str] = []

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        peers.append(context.peer())
        return pb.ModelInferResponse(model_name="peers").SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", peers


@pytest.mark.parametrize("connections", [1, 3])
async def test_a_serving_thread_sends_to_a_backend_on_backend_connections_connections(
        backends, router_factory, dp, connections):
    server, address, peers = await _peer_recording_backend()
    try:
        await backends.model("mod_peers", address, "peers")
        await backends.deployment("dep_peers", "mod_peers")
        router = await router_factory(threads=1, backend_connections=connections)
        await dp.wait_for_version(router, "dep_peers", 1)
        async with grpc.aio.insecure_channel(router.address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            request = dp.infer_request("dep_peers").SerializeToString()
            for _ in range(3):   # calls in turn, then many at once: every connection is up by the last round
                for _ in range(2 * connections):
                    await call(request, timeout=10)
                peers.clear()
                await asyncio.gather(*(call(request, timeout=10) for _ in range(8 * connections)))
        assert len(set(peers)) == connections, peers
    finally:
        await server.stop(0)


async def test_a_call_without_a_deadline_gets_the_default_one(backends, router_factory, dp):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_nodl", "mod_a")
    router = await router_factory(request_timeout_s=5.0)
    await dp.wait_for_version(router, "dep_nodl", 1)
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            dp.infer_request("dep_nodl").SerializeToString())   # no timeout: no grpc-timeout header
        answer = await asyncio.wait_for(call, 10)
        metadata = dict(await call.initial_metadata())
    assert answer and metadata["tsplit-variant"] == "champion"


async def test_concurrent_calls_on_every_thread_are_each_counted_once(backends, router_factory, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_many", "mod_a", [("ch_b", "mod_b", 50)])
    router = await router_factory(threads=4)
    await dp.wait_for_version(router, "dep_many", 1)
    clients = [client_factory(router.address) for _ in range(4)]   # connections spread over the threads
    answers = await asyncio.gather(*(c.variants(dp.infer_request("dep_many"), 300, concurrency=25) for c in clients))
    counts = collections.Counter(name for names in answers for name in names)
    stats = router.stats.snapshot()["dep_many"]
    assert {name: row["requests"] for name, row in stats.items()} == dict(counts)
    assert sum(sum(row["latency_buckets"]) for row in stats.values()) == 1200


async def test_workers_share_a_port_and_each_registers(backends, etcd, etcd_endpoint, layout, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_workers", "mod_a")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dataplane.server", "--workers", "2", "--listen", f"127.0.0.1:{port}",
         "--etcd", etcd_endpoint, "--etcd-prefix", layout.prefix, "--router-id", "r-w",
         "--metrics-listen", "127.0.0.1:0", "--shutdown-grace", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        records: list[dict] = []
        while time.monotonic() < deadline:
            kvs, _ = await etcd.get_prefix(layout.routers)
            records = [json.loads(kv.value) for kv in kvs]
            if len(records) == 2 and all(r["applied"].get("dep_workers") == 1 for r in records):
                break
            await asyncio.sleep(0.1)
        assert sorted(r["router_id"] for r in records) == ["r-w-0", "r-w-1"], records
        assert {r["address"] for r in records} == {f"127.0.0.1:{port}"}
        assert len({r["pid"] for r in records}) == 2 and len({r["metrics_url"] for r in records}) == 2
        names = await client_factory(f"127.0.0.1:{port}").variants(dp.infer_request("dep_workers"), 40)
        assert names == ["champion"] * 40
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
        kvs, _ = await etcd.get_prefix(layout.routers)
        assert kvs == []  # each worker revoked its lease on the way out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        process.stderr.close()


async def test_a_taken_port_is_a_clear_error_without_reuse_port(router, router_factory):
    with pytest.raises(OSError, match="cannot listen on"):
        await router_factory(listen=router.address)
