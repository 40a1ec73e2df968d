"""What differs between the router's two gRPC servers (--server aio / sync), on both: a call
with no deadline, counts under many concurrent calls, shadow copies from serving threads,
and the settings (with --workers auto)."""

from __future__ import annotations

import asyncio
import collections
import os

import grpc
import pytest

from dataplane.settings import SERVER_KINDS, parse_settings

# The grpcio servers; the native core runs the whole router suite itself
# (TSPLIT_TEST_ROUTER_SERVER=native, tests/dataplane/conftest.py).
both_servers = pytest.mark.parametrize("server", [kind for kind in SERVER_KINDS if kind != "native"])


@both_servers
async def test_a_call_without_a_deadline_gets_the_default_one(backends, router_factory, dp, server):
    await backends.demo_model("mod_a")
    await backends.deployment("dep_nodl", "mod_a")
    router = await router_factory(server=server, request_timeout_s=5.0)
    await dp.wait_for_version(router, "dep_nodl", 1)
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            dp.infer_request("dep_nodl").SerializeToString())   # no timeout: no grpc-timeout header
        answer = await asyncio.wait_for(call, 10)
        metadata = dict(await call.initial_metadata())
    assert answer and metadata["tsplit-variant"] == "champion"


@both_servers
async def test_concurrent_calls_are_each_counted_once(backends, router_factory, client_factory, dp, server):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_many", "mod_a", [("ch_b", "mod_b", 50)])
    router = await router_factory(server=server, threads=8)
    await dp.wait_for_version(router, "dep_many", 1)
    counts = collections.Counter(await client_factory(router.address).variants(
        dp.infer_request("dep_many"), 1200, concurrency=100))
    stats = router.stats.snapshot()["dep_many"]
    assert {name: row["requests"] for name, row in stats.items()} == dict(counts)
    assert sum(sum(row["latency_buckets"]) for row in stats.values()) == 1200


@both_servers
async def test_shadow_copies_are_sent_and_compared(backends, router_factory, client_factory, dp, server):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_sh", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    router = await router_factory(server=server)
    await dp.wait_for_version(router, "dep_sh", 1)
    names = await client_factory(router.address).variants(dp.infer_request("dep_sh"), 40, concurrency=10)
    assert set(names) == {"champion"}
    await dp.wait_until(lambda: router.stats.snapshot()["dep_sh"].get("ch_b", {}).get("compared") == 40, 10)
    row = router.stats.snapshot()["dep_sh"]["ch_b"]
    assert row["mirrored"] == 40 and row["mirror_errors"] == 0 and row["requests"] == 0


@both_servers
def test_the_server_flag_is_checked(capsys, server):
    assert parse_settings(["--server", server, "--threads", "4"]).server == server
    with pytest.raises(SystemExit):
        parse_settings(["--server", server + "x"])
    assert "--server" in capsys.readouterr().err


def test_workers_auto_is_one_per_usable_cpu():
    assert parse_settings(["--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    assert parse_settings([], {"TSPLIT_ROUTER_WORKERS": "AUTO"}).workers == len(os.sched_getaffinity(0))
    assert parse_settings(["--workers", "3"]).workers == 3 and parse_settings([]).workers == 1
