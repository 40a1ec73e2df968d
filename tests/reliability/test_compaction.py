"""etcd is compacted past a disconnected router's last revision and defragmented: the
router keeps serving its last config meanwhile, then notices the compaction, reloads the
full snapshot and ends on the right versions (a deployment deleted meanwhile is gone, one
created meanwhile is there), while a connected router and every request carry on."""

from __future__ import annotations

import asyncio

from tsplit.etcd import Etcd


async def test_compaction_and_defrag_while_a_router_is_disconnected(etcd_private, system_factory, inference, rel):
    system = system_factory([etcd_private.endpoint])
    [model] = await system.models(["lin"])
    controlplane = await system.controlplane()
    rest = system_factory.rest((await system.gateway(controlplane.address)).url)
    link = await rel.CuttableLink(etcd_private.endpoint).start()
    stop, load = asyncio.Event(), None
    try:
        connected = await system.router()
        cut_off = await system.router(etcd=link.address)
        seeded = await rel.seed_deployment(rest, model.address, challengers=2)
        doomed = (await rest.create(seeded.champion))["deployment_id"]
        for router in (connected, cut_off):
            await inference.wait_for_version(router.address, seeded.slug, seeded.version)
            await inference.wait_for_version(router.address, doomed, 1)
        serving = rel.InferenceLoad(inference, [connected.address, cut_off.address], seeded.slug, pause_s=0.01)
        load = asyncio.create_task(serving.run(stop, 60))

        snapshots = cut_off.sync.snapshots
        link.cut()
        async with asyncio.timeout(10):
            while cut_off.sync.watch_failures == 0:
                await asyncio.sleep(0.02)
        for pct in (2, 3, 4, 5, 6):
            r = await rest.patch(seeded.slug, {"action": "update_traffic", "challenger_id": seeded.challengers[0],
                                               "traffic_pct": pct})
            assert r.status_code == 200, r.text
        final = r.json()["cache_version"]
        assert (await rest.http.delete(f"/v1/deployments/{doomed}", headers=rest.headers())).status_code == 200
        fresh = (await rest.create(seeded.champion))["deployment_id"]
        async with Etcd(etcd_private.endpoint, timeout=10) as admin:
            revision = await admin.revision()
            await admin.compact(revision)
            await admin.defragment()
        assert (await inference.infer(cut_off.address, seeded.slug))[:2] == ("OK", seeded.version)
        assert (await inference.infer(cut_off.address, doomed))[:2] == ("OK", 1), "kept its last config"

        loop = asyncio.get_running_loop()
        restored_at = loop.time()
        link.restore()
        took = await inference.wait_for_version(cut_off.address, seeded.slug, final, 15)
        reloaded_after = loop.time() - restored_at
    finally:
        stop.set()
        if load is not None:
            await load
        await link.close()

    assert cut_off.sync.snapshots == snapshots + 1, "a compacted watch reloads the full snapshot"
    assert cut_off.sync.revision >= revision
    for router in (connected, cut_off):
        assert (await inference.infer(router.address, seeded.slug))[:2] == ("OK", final)
        assert (await inference.infer(router.address, doomed))[0] == "NOT_FOUND"
        assert (await inference.infer(router.address, fresh))[:2] == ("OK", 1)
        assert router.sync.applied_versions() == {seeded.slug: final, fresh: 1}
    assert serving.records and all(rec.code == "OK" for rec in serving.records), "a request failed"
    assert connected.sync.snapshots == 1, "the connected router needed no reload"
    print(f"\ncompaction at revision {revision} + defrag while cut off: reloaded and on version {final} "
          f"{reloaded_after:.2f} s after the link returned ({took:.2f} s polling); {len(serving.records)} requests "
          f"all OK")
