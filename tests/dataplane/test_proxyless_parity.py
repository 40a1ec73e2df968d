"""One implementation, two transports: a router and a proxyless client, given the same
traffic, choose the same variants and score the same shadow pairs."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

WEIGHTS_C = ((1.0, 0.3), (0.2, 1.0))   # agrees with A's labels on most rows, not all
PAIR_FIELDS = ("mirrored", "mirror_dropped", "mirror_errors", "compared", "exact_matches", "label_agree",
               "label_total", "abs_diff_count")


async def _models(backends, dp) -> None:
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_b", weights=dp.WEIGHTS_B)
    await backends.demo_model("mod_c", weights=WEIGHTS_C)


async def _in_batches(calls, size: int = 20) -> list:
    results = []
    for start in range(0, len(calls), size):
        results += await asyncio.gather(*(call() for call in calls[start:start + size]))
    return results


async def test_split_stickiness_and_forced_variants_match_the_routers(
        backends, router, client_factory, proxyless_factory, dp):
    await _models(backends, dp)
    await backends.deployment("dep_par", "mod_a", [("ch_b", "mod_b", 30), ("ch_c", "mod_c", 10)])
    await dp.wait_for_version(router, "dep_par", 1)
    client = await proxyless_factory()
    via_router = client_factory(router.address)
    transports = {"router": via_router, "sync": dp.ProxylessCaller(client, "sync"),
                  "aio": dp.ProxylessCaller(client, "aio")}
    request = dp.infer_request("dep_par")
    shares = {"champion": 0.6, "ch_b": 0.3, "ch_c": 0.1}

    # The same routing keys: the same variant per key on every transport.
    keys = [f"user-{i}" for i in range(300)]
    chosen = {}
    for name, caller in transports.items():
        answers = await _in_batches([
            lambda key=key: caller.infer(request, metadata=(("x-routing-key", key),)) for key in keys])
        chosen[name] = [md["tsplit-variant"] for _, md in answers]
    assert chosen["sync"] == chosen["router"] and chosen["aio"] == chosen["router"]
    by_key = collections.Counter(chosen["router"])
    for variant, share in shares.items():
        assert abs(by_key[variant] - len(keys) * share) <= dp.binomial_bound(len(keys), share), by_key

    # Without a key: random, and within the same bounds on both (99.99 %: six random
    # checks here must not make the test flaky).
    n = 1000
    for caller in (via_router, transports["aio"]):
        counts = collections.Counter(await caller.variants(request, n, concurrency=50))
        for variant, share in shares.items():
            assert abs(counts[variant] - n * share) <= dp.binomial_bound(n, share, z=3.89), counts

    # Forced: the named variant, whatever the key says.
    for variant in shares:
        for caller in transports.values():
            _, md = await caller.infer(request, metadata=(("x-routing-key", "user-1"), ("x-tsplit-variant", variant)))
            assert md["tsplit-variant"] == variant

    # Both count what they answered the same way.
    router_ok = {v: row["ok"] for v, row in router.stats.snapshot()["dep_par"].items()}
    client_ok = {v: row["ok"] for v, row in client.stats_snapshot()["dep_par"].items()}
    assert sum(router_ok.values()) == len(keys) + n
    assert sum(client_ok.values()) == 2 * len(keys) + n
    router_forced = {v: row["forced"] for v, row in router.stats.snapshot()["dep_par"].items()}
    client_forced = {v: row["forced"] for v, row in client.stats_snapshot()["dep_par"].items()}
    assert router_forced == {v: 1 for v in shares} and client_forced == {v: 2 for v in shares}


@pytest.mark.parametrize("transport, in_loop", [("sync", False), ("aio", False), ("aio", True), ("sync", True)],
                         ids=["sync", "aio", "aio-in-loop", "sync-in-loop"])
async def test_shadow_pairs_are_scored_the_same_as_by_the_router(
        backends, router, client_factory, proxyless_factory, dp, transport, in_loop):
    await _models(backends, dp)
    await backends.deployment("dep_sh", "mod_a", [("ch_b", "mod_b", 50), ("ch_c", "mod_c", 40)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_sh", 1)
    client = await proxyless_factory(in_loop=in_loop)
    rng = random.Random(7)
    traffic = [(f"k-{i}", tuple((rng.random(), rng.random()) for _ in range(4))) for i in range(160)]

    async def send(caller) -> list[str]:
        answers = await _in_batches([
            lambda key=key, rows=rows: caller.infer(dp.infer_request("dep_sh", rows=rows),
                                                    metadata=(("x-routing-key", key),))
            for key, rows in traffic])
        return [md["tsplit-variant"] for _, md in answers]

    assert set(await send(client_factory(router.address))) == {"champion"}
    assert set(await send(dp.ProxylessCaller(client, transport))) == {"champion"}

    def pairs(stats: dict) -> dict:
        return {v: {f: row[f] for f in PAIR_FIELDS} for v, row in stats["dep_sh"].items() if v != "champion"}

    await dp.wait_until(lambda: router.mirrors.inflight == 0)
    expected = pairs(router.stats.snapshot())
    await dp.wait_until(lambda: client.mirrors_inflight == 0 and pairs(client.stats_snapshot()) == expected)
    # Identical figures (they are sums of the same pairs' scores; only float addition
    # order may differ).
    for variant in ("ch_b", "ch_c"):
        ours, theirs = client.stats_snapshot()["dep_sh"][variant], router.stats.snapshot()["dep_sh"][variant]
        assert ours["abs_diff_sum"] == pytest.approx(theirs["abs_diff_sum"], rel=1e-9)
        assert theirs["compared"] == theirs["mirrored"] > 0 and theirs["mirror_dropped"] == 0
    b, c = expected["ch_b"], expected["ch_c"]
    assert b["label_agree"] == 0 < b["label_total"]                 # opposite labels
    assert 0 < c["label_agree"] < c["label_total"]                   # mostly, not always, the same
    # Keyed mirror decisions: each challenger gets its share of the keys.
    for variant, share in (("ch_b", 0.5), ("ch_c", 0.4)):
        mirrored = expected[variant]["mirrored"]
        assert abs(mirrored - len(traffic) * share) <= dp.binomial_bound(len(traffic), share)
