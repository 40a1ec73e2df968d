"""The router's shadow sender process: frames, reports, drops when it is behind, and a new
sender when one dies (the router-level mirror behaviour is in test_shadow.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from hypothesis import given, settings, strategies as st

from dataplane.routing import Variant
from dataplane.shadow_process import FRAME_HEADER, NO_ANSWER, decode_meta, encode_frame
from tsplit.etcd_server import free_port


_text = st.text(min_size=1, max_size=12)
_variants = st.lists(st.builds(Variant, _text, _text, _text, _text, st.text(max_size=5), st.integers(0, 10_000)),
                     min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(slug=_text, variants=_variants, request=st.binary(max_size=64), answer=st.none() | st.binary(max_size=64))
def test_a_frame_carries_the_request_the_answer_and_the_variants(slug, variants, request, answer):
    frame = encode_frame(slug, tuple(variants), request, answer)
    meta_len, request_len, answer_len = FRAME_HEADER.unpack_from(frame)
    at = FRAME_HEADER.size
    meta, at = frame[at:at + meta_len], at + meta_len
    assert frame[at:at + request_len] == request
    at += request_len
    if answer is None:
        assert answer_len == NO_ANSWER and at == len(frame)
    else:
        assert frame[at:at + answer_len] == answer and at + answer_len == len(frame)
    assert decode_meta(meta) == (slug, [(v.name, v.model_id, v.endpoint, v.model_name, v.model_version)
                                        for v in variants])


async def test_the_sender_copies_compares_and_reports_per_variant(backends, client_factory, dp):
    twin_a = await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    twin_b = await backends.demo_model("mod_b", weights=dp.WEIGHTS_A)
    answer, _ = await client_factory(twin_a.endpoint).infer(dp.infer_request(twin_a.model_name))
    request = dp.infer_request("dep_x").SerializeToString()
    twin = Variant("ch_twin", "mod_b", twin_b.endpoint, twin_b.model_name, "", 100)
    dead = Variant("ch_dead", "mod_dead", f"127.0.0.1:{free_port()}", "gone", "", 100)
    frames = [encode_frame("dep_x", (twin, dead), request, answer.SerializeToString()) for _ in range(3)]
    frames.append(encode_frame("dep_x", (twin,), request, None))   # the champion failed: nothing to compare
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dataplane.shadow_sender", "--timeout", "2", "--nice", "0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        proc.stdin.write(b"".join(frames))
        proc.stdin.close()
        out = await asyncio.wait_for(proc.stdout.read(), 20)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    totals: dict[str, list] = {}
    for line in out.splitlines():
        for slug, name, model_id, *counts, buckets in json.loads(line)["rows"]:
            assert slug == "dep_x"
            assert sum(count for _, count in buckets) == counts[0]  # a latency bucket per copy finished
            old = totals.setdefault(name, [0] * len(counts))
            totals[name] = [a + b for a, b in zip(old, counts)]
    # finished, errors, latency, compared, exact, agree, total, diff_sum, diff_count
    twin_row, dead_row = totals["ch_twin"], totals["ch_dead"]
    assert (twin_row[0], twin_row[1], twin_row[3], twin_row[4]) == (4, 0, 3, 3)
    assert twin_row[5] == twin_row[6] > 0 and twin_row[7] == 0.0
    assert (dead_row[0], dead_row[1], dead_row[3]) == (3, 3, 0)


async def test_the_sender_runs_at_a_lower_cpu_priority(backends, router, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_nice", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_nice", 1)
    await client_factory(router.address).infer(dp.infer_request("dep_nice"))
    pid = router.mirrors.sender_pid
    assert pid is not None and pid != os.getpid()
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    # The sender lowers its own priority as it starts.
    await dp.wait_until(lambda: os.getpriority(os.PRIO_PROCESS, pid) > ours, timeout=10)
    await dp.wait_until(dp.mirrors_settled(router, "dep_nice", "ch_b"))


async def test_a_sender_that_falls_behind_costs_copies_not_answers(backends, router_factory, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_behind", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    router = await router_factory(max_inflight_mirrors=100_000)
    await dp.wait_for_version(router, "dep_behind", 1)
    client = client_factory(router.address)
    # Requests of ~64 KiB (and answers): the sender's pipe (1 MiB) holds a few unread.
    rows = [(0.1, 0.2)] * 8000
    request = dp.infer_request("dep_behind", rows=rows)
    await client.infer(request)
    pid = router.mirrors.sender_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        n = 40
        started = time.perf_counter()
        names = await client.variants(request, n, concurrency=4)
        elapsed = time.perf_counter() - started
        assert names == ["champion"] * n
        row = router.stats.snapshot()["dep_behind"]["ch_b"]
        assert row["mirror_dropped"] >= 1
        assert row["mirrored"] + row["mirror_dropped"] == n + 1
        assert elapsed < 10  # no answer waited for the stopped sender (it never reads)
    finally:
        os.kill(pid, signal.SIGCONT)
    await dp.wait_until(dp.mirrors_settled(router, "dep_behind", "ch_b"), timeout=30)
    assert router.mirrors.sender_pid == pid


async def test_a_sender_that_dies_is_replaced(backends, router, client_factory, dp):
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_twin", weights=dp.WEIGHTS_A)
    await backends.deployment("dep_respawn", "mod_a", [("ch_twin", "mod_twin", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_respawn", 1)
    client = client_factory(router.address)
    await client.variants(dp.infer_request("dep_respawn"), 5)
    await dp.wait_until(dp.mirrors_settled(router, "dep_respawn", "ch_twin"))
    first = router.mirrors.sender_pid
    os.kill(first, signal.SIGKILL)
    await dp.wait_until(lambda: router.mirrors.sender_pid is None, timeout=5)
    # Past the respawn pause a copy starts a new sender and pairs are scored again.
    deadline = time.monotonic() + 10
    while router.mirrors.sender_pid is None and time.monotonic() < deadline:
        await client.infer(dp.infer_request("dep_respawn"))
        await asyncio.sleep(0.1)
    second = router.mirrors.sender_pid
    assert second is not None and second != first
    before = router.stats.snapshot()["dep_respawn"]["ch_twin"]["compared"]
    await client.variants(dp.infer_request("dep_respawn"), 5)
    await dp.wait_until(lambda: router.stats.snapshot()["dep_respawn"]["ch_twin"]["compared"] >= before + 5)
    await dp.wait_until(lambda: router.mirrors.inflight == 0)


async def test_stopping_the_router_ends_the_sender(backends, router_factory, client_factory, dp):
    await backends.demo_model("mod_a")
    await backends.demo_model("mod_b")
    await backends.deployment("dep_stop", "mod_a", [("ch_b", "mod_b", 100)], shadow_mode=True)
    router = await router_factory()
    await dp.wait_for_version(router, "dep_stop", 1)
    await client_factory(router.address).variants(dp.infer_request("dep_stop"), 10)
    pid = router.mirrors.sender_pid
    await dp.wait_until(dp.mirrors_settled(router, "dep_stop", "ch_b"))
    await router.stop(1.0)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_request_larger_than_the_pipe_is_still_copied_whole(backends, router, client_factory, dp):
    await backends.demo_model("mod_a", weights=dp.WEIGHTS_A)
    await backends.demo_model("mod_twin", weights=dp.WEIGHTS_A)
    await backends.deployment("dep_big", "mod_a", [("ch_twin", "mod_twin", 100)], shadow_mode=True)
    await dp.wait_for_version(router, "dep_big", 1)
    rows = [(i / 150_000, 0.5) for i in range(150_000)]   # 1.2 MB of FP32: more than the pipe holds
    request = dp.infer_request("dep_big", rows=rows)
    assert request.ByteSize() > 1 << 20
    _, metadata = await client_factory(router.address).infer(request, timeout=30)
    assert metadata["tsplit-variant"] == "champion"
    await dp.wait_until(dp.mirrors_settled(router, "dep_big", "ch_twin"), timeout=30)
    row = router.stats.snapshot()["dep_big"]["ch_twin"]
    assert (row["mirrored"], row["compared"], row["exact_matches"], row["mirror_dropped"]) == (1, 1, 1, 0)


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
