"""Shadow mode through a real router: the champion answers at its own speed, challengers
get bounded background copies, and each pair is scored."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import pytest

from dataplane.compare import compare_responses
from tsplit.etcd_server import free_port
from tsplit.status import latency_bucket


async def _latencies_ms(client, request, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await client.infer(request)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies



async def test_a_slow_challenger_does_not_slow_the_champion(backends, router, client_factory, dp):
    await backends.demo_model("mod_a", latency_ms=5)
    await backends.demo_model("mod_slow", latency_ms=205)
    await backends.deployment("dep_shadow", "mod_a")
    await dp.wait_for_version(router, "dep_shadow", 1)
    client = client_factory(router.address)
    request = dp.infer_request("dep_shadow")
    n = 40
    await _latencies_ms(client, request, 5)  # warm the channels
    alone = await _latencies_ms(client, request, n)

    await backends.deployment("dep_shadow", "mod_a", [("ch_slow", "mod_slow", 100)], shadow_mode=True,
                              cache_version=2)
    await dp.wait_for_version(router, "dep_shadow", 2)
    shadowed = await _latencies_ms(client, request, n)
    assert router.stats.snapshot()["dep_shadow"]["ch_slow"]["mirrored"] == n
    assert router.mirrors.inflight > 0  # the copies were still running while the champion answered

    assert statistics.median(shadowed) <= statistics.median(alone) * 1.5 + 3, (alone, shadowed)
    assert statistics.median(shadowed) < 100
    await dp.wait_until(dp.mirrors_settled(router, "dep_shadow", "ch_slow"), timeout=10)
    row = router.stats.snapshot()["dep_shadow"]["ch_slow"]
    assert row["mirror_latency_ms_sum"] / row["mirrored"] >= 200
    assert (row["requests"], row["compared"], row["mirror_errors"]) == (0, n, 0)
    # What the guardrails read in shadow mode: copies answered and their latency histogram.
    assert row["mirror_answers"] == n and sum(row["mirror_latency_buckets"]) == n
    assert sum(row["mirror_latency_buckets"][:latency_bucket(200)]) == 0


async def test_mirrors_are_bounded_in_flight_and_drops_are_counted(backends, router_factory, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_slow", latency_ms=300)
    await backends.deployment("dep_bound", "mod_a", [("ch_slow", "mod_slow", 100)], shadow_mode=True)
    router = await router_factory(max_inflight_mirrors=4)
    await dp.wait_for_version(router, "dep_bound", 1)
    client = client_factory(router.address)
    most = 0

    async def watch_inflight() -> None:
        nonlocal most
        while True:
            most = max(most, router.mirrors.inflight)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch_inflight())
    n = 40
    try:
        names = await client.variants(dp.infer_request("dep_bound"), n, concurrency=n)
    finally:
        watcher.cancel()
    assert names == ["champion"] * n
    row = router.stats.snapshot()["dep_bound"]["ch_slow"]
    assert most <= 4
    assert row["mirrored"] + row["mirror_dropped"] == n
    assert row["mirrored"] >= 4 and row["mirror_dropped"] >= 1
    await dp.wait_until(dp.mirrors_settled(router, "dep_bound", "ch_slow"), timeout=10)
    assert router.stats.snapshot()["dep_bound"]["ch_slow"]["compared"] == row["mirrored"]


async def test_identical_models_agree_completely(backends, router, client_factory, dp):
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_twin", weights=dp.WEIGHTS_A)
    await backends.deployment("dep_twin", "mod_a", [("ch_twin", "mod_twin", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_twin", 1)
    client = client_factory(router.address)
    rng = random.Random(3)
    n, batch = 30, 4
    for _ in range(n):
        rows = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(batch)]
        await client.infer(dp.infer_request("dep_twin", rows=rows))
    await dp.wait_until(dp.mirrors_settled(router, "dep_twin", "ch_twin"))
    row = router.stats.snapshot()["dep_twin"]["ch_twin"]
    assert (row["mirrored"], row["compared"], row["exact_matches"]) == (n, n, n)
    assert row["label_agree"] == row["label_total"] > 0
    assert row["abs_diff_sum"] == 0.0 and row["abs_diff_count"] > 0


async def test_pair_figures_match_the_two_models_answers(backends, router, client_factory, dp):
    a = await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    b = await backends.demo_model("mod_b", weights=dp.WEIGHTS_B)
    await backends.deployment("dep_pairs", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_pairs", 1)
    client = client_factory(router.address)
    champion_direct, challenger_direct = client_factory(a.endpoint), client_factory(b.endpoint)
    rng = random.Random(5)
    expected = {"compared": 0, "exact_matches": 0, "label_agree": 0, "label_total": 0, "abs_diff_count": 0}
    expected_diff = 0.0
    for i in range(20):
        # Some rows tie (x0 == x1): both models label them 0, so agreement is partial.
        rows = [(0.5, 0.5)] if i % 4 == 0 else [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(3)]
        await client.infer(dp.infer_request("dep_pairs", rows=rows))
        ours, _ = await champion_direct.infer(dp.infer_request(a.model_name, rows=rows))
        theirs, _ = await challenger_direct.infer(dp.infer_request(b.model_name, rows=rows))
        c = compare_responses(ours, theirs)
        expected["compared"] += 1
        expected["exact_matches"] += int(c.exact_match)
        expected["label_agree"] += c.label_agree
        expected["label_total"] += c.label_total
        expected["abs_diff_count"] += c.abs_diff_count
        expected_diff += c.abs_diff_sum
    await dp.wait_until(dp.mirrors_settled(router, "dep_pairs", "ch_b"))
    row = router.stats.snapshot()["dep_pairs"]["ch_b"]
    assert {k: row[k] for k in expected} == expected
    assert 0 < expected["label_agree"] < expected["label_total"]
    assert row["abs_diff_sum"] == pytest.approx(expected_diff)


async def test_a_dead_shadow_challenger_costs_users_nothing(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.model("mod_dead", f"127.0.0.1:{free_port()}", "lin-dead")
    await backends.deployment("dep_dead", "mod_a", [("ch_dead", "mod_dead", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_dead", 1)
    n = 30
    names = await client_factory(router.address).variants(dp.infer_request("dep_dead"), n, concurrency=10)
    assert names == ["champion"] * n
    await dp.wait_until(dp.mirrors_settled(router, "dep_dead", "ch_dead"))
    stats = router.stats.snapshot()["dep_dead"]
    assert stats["champion"]["ok"] == n
    assert (stats["ch_dead"]["mirrored"], stats["ch_dead"]["mirror_errors"], stats["ch_dead"]["compared"],
            stats["ch_dead"]["failovers"], stats["ch_dead"]["mirror_answers"]) == (n, n, 0, 0, n)


async def test_each_challenger_is_mirrored_its_share_and_split_mode_mirrors_nothing(
        backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.demo_model("mod_c")
    await backends.deployment("dep_share", "mod_a", [("ch_b", "mod_b", 30), ("ch_c", "mod_c", 10)],
                              shadow_mode=True)
    await dp.wait_for_version(router, "dep_share", 1)
    client = client_factory(router.address)
    n = 800
    assert set(await client.variants(dp.infer_request("dep_share"), n)) == {"champion"}
    stats = router.stats.snapshot()["dep_share"]
    for variant, share in (("ch_b", 0.30), ("ch_c", 0.10)):
        # Chosen for a copy: sent, or dropped when the (low-priority) shadow sender was
        # behind on a busy machine.
        chosen = stats[variant]["mirrored"] + stats[variant]["mirror_dropped"]
        assert abs(chosen - n * share) <= dp.binomial_bound(n, share), stats[variant]
    _, metadata = await client.infer(dp.infer_request("dep_share"), metadata=(("x-tsplit-variant", "ch_b"),))
    assert metadata["tsplit-variant"] == "ch_b"  # forced in shadow mode: the challenger answers itself

    await backends.deployment("dep_share", "mod_a", [("ch_b", "mod_b", 30), ("ch_c", "mod_c", 10)],
                              cache_version=2)
    await dp.wait_for_version(router, "dep_share", 2)
    await dp.wait_until(dp.mirrors_settled(router, "dep_share", "ch_b"))
    before = router.stats.snapshot()["dep_share"]["ch_b"]["mirrored"]
    await client.variants(dp.infer_request("dep_share"), 50)
    assert router.stats.snapshot()["dep_share"]["ch_b"]["mirrored"] == before


async def test_a_large_mirrored_request_never_delays_the_champion(backends, router_factory, client_factory, dp):
    """A 1.2 MB request mirrored to a twin that answers 5 s later than the champion: the
    champion's answer comes while its copy is still out (it waits neither for the copy nor
    for the comparison of the two large answers), and the pair is then scored whole."""
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_twin", weights=dp.WEIGHTS_A, latency_ms=5000)
    await backends.deployment("dep_big", "mod_a", [("ch_twin", "mod_twin", 100)], shadow_mode=True)
    router = await router_factory(mirror_timeout_s=60.0)
    await dp.wait_for_version(router, "dep_big", 1)
    client = client_factory(router.address)
    await client.infer(dp.infer_request("dep_big"))   # connections up, and one small pair
    await dp.wait_until(dp.mirrors_settled(router, "dep_big", "ch_twin"), timeout=30)
    rows = [(i / 150_000, 0.5) for i in range(150_000)]
    request = dp.infer_request("dep_big", rows=rows)
    assert request.ByteSize() > 1 << 20
    response, metadata = await client.infer(request, timeout=60)
    assert metadata["tsplit-variant"] == "champion" and len(response.SerializeToString()) > 1 << 20
    assert router.mirrors.inflight == 1, "the champion's answer waited for its mirrored copy"
    await dp.wait_until(dp.mirrors_settled(router, "dep_big", "ch_twin"), timeout=60)
    row = router.stats.snapshot()["dep_big"]["ch_twin"]
    assert (row["mirrored"], row["compared"], row["exact_matches"], row["mirror_dropped"]) == (2, 2, 2, 0)
    # Every row of both outputs ("probabilities" and "label") of both pairs, all agreeing.
    assert row["label_agree"] == row["label_total"] == 2 * (150_000 + 1)


async def test_copies_of_a_deleted_deployment_do_not_bring_its_counters_back(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_slow", latency_ms=300)
    await backends.deployment("dep_gone", "mod_a", [("ch_slow", "mod_slow", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_gone", 1)
    await client_factory(router.address).variants(dp.infer_request("dep_gone"), 5)
    assert router.mirrors.inflight == 5
    await backends.etcd.delete(backends.layout.deployment("dep_gone"))
    await dp.wait_until(lambda: "dep_gone" not in router.sync.applied)
    await dp.wait_until(lambda: router.mirrors.inflight == 0, timeout=10)   # the copies came back
    assert "dep_gone" not in router.stats.snapshot()


def test_the_comparison_process_answers_each_pair_and_survives_garbage():
    import io
    import json
    import struct

    from dataplane.mirror import compare_raw, serve_comparisons
    from tsplit.inference import grpc_predict_v2_pb2 as pb

    ours = pb.ModelInferResponse(model_name="a")
    ours.outputs.add(name="label", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend([1, 0])
    theirs = pb.ModelInferResponse(model_name="b")
    theirs.outputs.add(name="label", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend([1, 1])
    pairs = [(ours.SerializeToString(), theirs.SerializeToString()), (b"\xff\xff", b"")]
    stdin = io.BytesIO(b"".join(struct.pack("<QQ", len(a), len(b)) + a + b for a, b in pairs))
    stdout = io.BytesIO()
    serve_comparisons(stdin, stdout)
    first, second = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert tuple(first) == compare_raw(*pairs[0])
    assert first[1:3] == [1, 2]  # one of two labels agrees
    assert "error" in second
