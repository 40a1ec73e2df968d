"""etcd fully down under inference load: the routers answer every request with the last
config, the control plane answers 503 unavailable (REST and gRPC, within 5 s) and writes
nothing, and after etcd returns every router reaches the newest version without a restart.

The outage lasts TSPLIT_RELIABILITY_OUTAGE_S seconds (6 here; the issue's 30 s run:
TSPLIT_RELIABILITY_OUTAGE_S=30, or scripts/soak --etcd-outage 30)."""

from __future__ import annotations

import asyncio
import os

import grpc

from tsplit.errors import ERROR_METADATA_KEY
from tsplit.v1 import controlplane_pb2 as cp_pb
from tsplit.v1 import controlplane_pb2_grpc as cp_grpc

OUTAGE_S = float(os.environ.get("TSPLIT_RELIABILITY_OUTAGE_S", "6"))


async def test_etcd_down_routers_serve_the_last_config_and_catch_up(
        etcd_private, system_factory, inference, rel, dev_auth):
    system = system_factory([etcd_private.endpoint])
    [model] = await system.models(["lin"])
    controlplane = await system.controlplane()
    gateway = await system.gateway(controlplane.address)
    routers = [await system.router(), await system.router()]
    rest = system_factory.rest(gateway.url)
    seeded = await rel.seed_deployment(rest, model.address, challengers=1)
    for router in routers:
        await inference.wait_for_version(router.address, seeded.slug, seeded.version)

    loop = asyncio.get_running_loop()
    serving = rel.InferenceLoad(inference, [r.address for r in routers], seeded.slug, per_address=2, pause_s=0.01)
    stop = asyncio.Event()
    load = asyncio.create_task(serving.run(stop, OUTAGE_S + 90))
    await asyncio.sleep(1.0)
    etcd_private.kill()
    down_at = loop.time()

    async with grpc.aio.insecure_channel(controlplane.address) as channel:
        stub = cp_grpc.ControlPlaneStub(channel)
        metadata = (("authorization", f"Bearer {dev_auth.token(sub='rel-user')}"),)
        probes, health = [], set()
        for i in range(1000):
            if loop.time() > down_at + OUTAGE_S:
                break
            started = loop.time()
            patch = await rest.patch(seeded.slug, {"action": "toggle_shadow", "shadow_mode": True}, key=f"down-{i}")
            get = await rest.http.get(f"/v1/deployments/{seeded.slug}", headers=rest.headers())
            probes += [(patch, loop.time() - started), (get, 0.0)]
            try:
                await stub.GetDeployment(cp_pb.GetDeploymentRequest(deployment_id=seeded.slug),
                                         metadata=metadata, timeout=6)
                raise AssertionError("the control plane answered a read while etcd was down")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert dict(err.trailing_metadata())[ERROR_METADATA_KEY] == "unavailable"
                rel.assert_no_internal_detail(err.details())
            health |= {await inference.health(r.address) for r in routers}
            await asyncio.sleep(0.3)
    down_for = loop.time() - down_at
    etcd_private.start()
    up_at = loop.time()

    for response, took in probes:
        assert response.status_code == 503 and response.json()["error"] == "unavailable", response.text
        assert took < 5.0, f"a 503 took {took:.1f} s"
        rel.assert_no_internal_detail(response.text)
    assert health == {"SERVING"}, f"router health while etcd was down: {health}"

    async with asyncio.timeout(30):  # the first accepted change after etcd is back
        for attempt in range(300):
            r = await rest.patch(seeded.slug, {"action": "toggle_shadow", "shadow_mode": True}, key="after")
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            await asyncio.sleep(0.1)
    new_version = r.json()["cache_version"]
    assert new_version == seeded.version + 1, "nothing the 503s refused was written"
    caught_up = [await inference.wait_for_version(router.address, seeded.slug, new_version, 20) for router in routers]
    stop.set()
    await load

    during = [rec for router in routers for rec in serving.of(router.address, down_at, up_at)]
    assert during and all(rec.code == "OK" and rec.cache_version == seeded.version for rec in during), (
        "a router failed or changed config while etcd was down")
    assert all(rec.code == "OK" for rec in serving.records)
    history = await rest.history(seeded.slug)
    assert [e["request_id"] for e in history[seeded.version:]] == ["after"]
    print(f"\netcd down {down_for:.1f} s: {len(during)} inferences during the outage all OK on version "
          f"{seeded.version}; {len(probes)} control-plane answers all 503 unavailable (slowest PATCH "
          f"{max(t for _, t in probes) * 1000:.0f} ms); routers on the new version "
          f"{(loop.time() - up_at):.1f} s after etcd restarted (max wait after the write "
          f"{max(caught_up) * 1000:.0f} ms)")
