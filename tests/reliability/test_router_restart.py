"""A router restarts under inference load: the other routers keep answering every request;
the restarted one (same address) is NOT_SERVING and answers UNAVAILABLE, never a wrong
route, until its first snapshot is loaded (held back here by cutting its link to etcd),
then serves the version written while it was down."""

from __future__ import annotations

import asyncio

from tsplit.inference import grpc_predict_v2_pb2 as infer_pb
from tsplit.inference import grpc_predict_v2_pb2_grpc as infer_grpc


async def test_restarted_router_waits_for_its_snapshot_then_serves_the_current_version(
        etcd_endpoint, system_factory, inference, rel):
    system = system_factory([etcd_endpoint])
    [model] = await system.models(["lin"])
    controlplane = await system.controlplane()
    gateway = await system.gateway(controlplane.address)
    rest = system_factory.rest(gateway.url)
    link = await rel.CuttableLink(etcd_endpoint).start()
    loop = asyncio.get_running_loop()
    stop, load = asyncio.Event(), None
    try:
        steady = [await system.router(), await system.router()]
        restarting = await system.router(etcd=link.address)
        seeded = await rel.seed_deployment(rest, model.address, challengers=1)
        for router in (*steady, restarting):
            await inference.wait_for_version(router.address, seeded.slug, seeded.version)

        serving = rel.InferenceLoad(inference, [r.address for r in (*steady, restarting)], seeded.slug,
                                    per_address=2, pause_s=0.01)
        load = asyncio.create_task(serving.run(stop, 60))
        await asyncio.sleep(0.5)
        address, port = restarting.address, restarting.port
        await system.stop(restarting)
        stopped_at = loop.time()

        r = await rest.patch(seeded.slug, {"action": "toggle_shadow", "shadow_mode": True})
        assert r.status_code == 200, r.text
        current = r.json()["cache_version"]
        for router in steady:
            await inference.wait_for_version(router.address, seeded.slug, current)

        link.cut()  # the restarted router cannot load its snapshot yet
        restarted = await system.router(listen=f"127.0.0.1:{port}", etcd=link.address, wait_ready=False)
        restarted_at = loop.time()
        assert restarted.address == address
        ready_stub = infer_grpc.GRPCInferenceServiceStub(inference.channel(address))
        assert await inference.health(address, wait_for_ready=True) == "NOT_SERVING"
        for _ in range(15):  # 1.5 s without etcd: never serving
            assert await inference.health(address) == "NOT_SERVING"
            assert not (await ready_stub.ServerReady(infer_pb.ServerReadyRequest(), timeout=2)).ready
            assert (await inference.infer(address, seeded.slug))[0] == "UNAVAILABLE"
            await asyncio.sleep(0.1)
        link.restore()
        await asyncio.wait_for(restarted.sync.ready.wait(), 15)
        ready_after = loop.time() - restarted_at
        assert await inference.health(address) == "SERVING"
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        if load is not None:
            await load
        await link.close()

    for router in steady:
        records = serving.of(router.address)
        assert records and all(rec.code == "OK" for rec in records), "a steady router failed a request"
        assert {rec.cache_version for rec in serving.of(router.address, since=stopped_at + 1)} == {current}
    after = serving.of(address, since=restarted_at)
    assert {rec.code for rec in after} <= {"OK", "UNAVAILABLE"}, {rec.code for rec in after}
    answered = [rec for rec in after if rec.code == "OK"]
    assert answered and {rec.cache_version for rec in answered} == {current}, "served an old or no version"
    assert min(rec.sent for rec in answered) > restarted_at + 1.5, "served before its snapshot"
    print(f"\nrouter restart: {sum(len(serving.of(r.address)) for r in steady)} requests to the other routers "
          f"all OK; restarted router NOT_SERVING for {ready_after:.2f} s (etcd link cut 1.5 s), then served "
          f"version {current} only")
