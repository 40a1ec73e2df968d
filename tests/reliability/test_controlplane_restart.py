"""Two control-plane replicas (two start_controlplane on one etcd, each behind its own
gateway) take PATCH writers at once, and one replica is restarted in the middle: every
accepted change is in the history exactly once under its Idempotency-Key, the versions are
contiguous, no writer's last change is lost, and the router ends on the final version.

(tests/controlplane/test_concurrency.py races 32 gRPC writers on two replicas; this one goes
through the gateways and adds the restart, with clients retrying on the other replica.)"""

from __future__ import annotations

import asyncio


async def test_replicas_writing_at_once_and_a_restart_lose_no_update(etcd_endpoint, system_factory, inference, rel):
    system = system_factory([etcd_endpoint])
    [model] = await system.models(["lin"])
    first, second = await system.controlplane(), await system.controlplane()
    rests = [system_factory.rest((await system.gateway(cp.address)).url) for cp in (first, second)]
    router = await system.router()
    seeded = await rel.seed_deployment(rests[0], model.address, challengers=4)

    loop = asyncio.get_running_loop()
    patches = rel.PatchLoad(rests, seeded.slug, seeded.challengers, pause_s=0.0, retry_pause_s=0.05)
    stop = asyncio.Event()
    load = asyncio.create_task(patches.run(stop, 60))
    try:
        await asyncio.sleep(2.0)
        async with asyncio.timeout(10):  # stop the replica with requests in flight through it
            while patches.inflight[rests[0].url] < 2:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        address = first.address
        await system.stop(first, grace_s=0)  # calls in flight are cut: their answers are lost
        stopped_at = loop.time()
        await asyncio.sleep(1.0)
        restarted = await system.controlplane(listen=address)
        restarted_at = loop.time()
        async with asyncio.timeout(30):  # the restarted replica accepts writes again
            while not any(a.status == 200 and a.via == rests[0].url and a.sent > restarted_at for a in patches.answers):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await load
    await patches.resolve()

    statuses = patches.statuses()
    assert {status for status, _ in statuses} <= {200, 503}, statuses
    for answer in patches.answers:
        if answer.status != 200:
            rel.assert_no_internal_detail(answer.message)
    accepted_via = {a.via for a in patches.answers if a.status == 200 and a.sent < stopped_at}
    assert accepted_via == {r.url for r in rests}, "both replicas took writes at once"

    history = await rests[1].history(seeded.slug)
    by_key = rel.check_ledger(patches, history, seeded.version)
    current = await rests[1].get(f"/v1/deployments/{seeded.slug}")
    final = patches.final()
    for writer, challenger_id in enumerate(seeded.challengers):
        last_key = max((k for k, a in final.items() if a.writer == writer), key=lambda k: by_key[k])
        [challenger] = [c for c in current["challengers"] if c["id"] == challenger_id]
        assert challenger["traffic_pct"] == final[last_key].pct, f"writer {writer}'s last change was lost"
    await inference.wait_for_version(router.address, seeded.slug, current["cache_version"])
    replayed = sum(1 for k in by_key if sum(a.key == k for a in patches.answers) > 1)
    print(f"\ncontrol-plane restart: {len(by_key)} versions from 2 replicas ({restarted.address} down "
          f"{restarted_at - stopped_at:.1f} s), answers {dict(statuses)}, {replayed} keys retried to learn "
          f"their outcome; history contiguous, no update lost")
