"""Scale edges: 10,000 deployments (written straight into etcd, in transactions of etcd's
default 128 operations) that a router cold-starts on and serves, the control plane lists
and changes; and 50 challengers in one deployment (1 % each: the 50 % cap exactly), each
applied in one change, reachable, split as weighted, shown in the status, with a 51st refused."""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tsplit.etcd import Etcd, put_op
from tsplit.etcd_server import free_port
from tsplit.resources import Challenger, Deployment, Model, dumps

DEPLOYMENTS = 10_000
TXN_OPS = 128  # etcd's default --max-txn-ops


async def router_process_cold_start(etcd: str, prefix: str, slug: str, inference) -> tuple[float, float]:
    """Seconds from exec to SERVING of a tsplit-router process, and its RSS then (MiB)."""
    address = f"127.0.0.1:{free_port()}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "tsplit-router"), "--listen", address, "--etcd", etcd,
         "--etcd-prefix", prefix, "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if await inference.health(address) == "SERVING":
                break
            assert process.poll() is None, "the router process exited"
            await asyncio.sleep(0.05)
        took = time.perf_counter() - started
        assert (await inference.infer(address, slug))[:2] == ("OK", 1)
        return took, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def test_ten_thousand_deployments_cold_start_serve_list_and_change(etcd_private, system_factory, inference, rel):
    system = system_factory([etcd_private.endpoint])
    champion_server, challenger_server = await system.models(["lin", "lin-b"])
    layout = system.layout
    models = [Model("mod_champ001", champion_server.address, "lin", org_id="org_1"),
              Model("mod_chall001", challenger_server.address, "lin-b", org_id="org_1")]
    slugs = [f"dep_s{i:05d}" for i in range(DEPLOYMENTS)]
    ops = [put_op(layout.model(m.model_id), dumps(m.to_json())) for m in models]
    for i, slug in enumerate(slugs):
        challengers = (Challenger(f"ch_{i:05d}", "mod_chall001", 100 + i % 4900),)
        ops.append(put_op(layout.deployment(slug), dumps(Deployment(
            slug, "org_1", "mod_champ001", challengers, shadow_mode=i % 7 == 0).to_json())))
    started = time.perf_counter()
    async with Etcd(etcd_private.endpoint, timeout=10) as etcd:
        for start in range(0, len(ops), TXN_OPS):
            assert (await etcd.txn([], ops[start:start + TXN_OPS])).succeeded
    written_s = time.perf_counter() - started

    started = time.perf_counter()
    router = await system.router()
    cold_start_s = time.perf_counter() - started
    assert len(router.sync.applied_versions()) == DEPLOYMENTS and not router.sync.table.problems
    assert await inference.health(router.address) == "SERVING"
    for slug in random.Random(7).sample(slugs, 50) + [slugs[0], slugs[-1]]:
        code, version, variant = await inference.infer(router.address, slug)
        assert (code, version) == ("OK", 1) and variant in ("champion", f"ch_{slug[-5:]}"), (slug, code, variant)

    process_start_s, process_rss_mb = await router_process_cold_start(etcd_private.endpoint, layout.prefix, slugs[-1],
                                                                      inference)

    controlplane = await system.controlplane()
    rest = system_factory.rest((await system.gateway(controlplane.address)).url)
    started = time.perf_counter()
    listed = await rest.get("/v1/deployments")
    list_s = time.perf_counter() - started
    assert sorted(d["deployment_id"] for d in listed["deployments"]) == slugs
    loop = asyncio.get_running_loop()
    changed_at = loop.time()
    r = await rest.patch(slugs[4321], {"action": "update_traffic", "challenger_id": "ch_04321", "traffic_pct": 50})
    assert r.status_code == 200 and r.json()["cache_version"] == 2, r.text
    await inference.wait_for_version(router.address, slugs[4321], 2, 10)
    propagation_ms = (loop.time() - changed_at) * 1000
    async with asyncio.timeout(10):  # the router's record (status) follows within ~100 ms
        while [r["applied_cache_version"] for r in (await rest.get(f"/v1/deployments/{slugs[4321]}/status"))["routers"]] != [2]:
            await asyncio.sleep(0.1)
    print(f"\n{DEPLOYMENTS} deployments: written in {written_s:.1f} s ({math.ceil(len(ops) / TXN_OPS)} txns); "
          f"router cold start to SERVING {cold_start_s:.2f} s in-process, {process_start_s:.2f} s as a process "
          f"(RSS {process_rss_mb:.0f} MiB); GET /v1/deployments {list_s:.2f} s; "
          f"a PATCH served by the router within {propagation_ms:.0f} ms")


async def test_fifty_challengers_in_one_deployment(etcd_endpoint, system_factory, inference, rel):
    system = system_factory([etcd_endpoint])
    servers = await system.models(["lin", "lin-b"])
    controlplane = await system.controlplane()
    rest = system_factory.rest((await system.gateway(controlplane.address)).url)
    router = await system.router()
    champion = (await rest.register("lin", servers[0].address))["model_id"]
    slug = (await rest.create(champion))["deployment_id"]
    models = [m["model_id"] for m in await asyncio.gather(*(rest.register("lin-b", servers[1].address) for _ in range(51)))]
    desired = {"champion": champion, "shadow_mode": False,
               "challengers": [{"model_id": m, "traffic_pct": 1} for m in models[:50]]}
    r = await rest.http.put(f"/v1/deployments/{slug}/traffic", json=desired, headers=rest.headers())
    assert r.status_code == 200, r.text
    version = r.json()["deployment"]["cache_version"]
    challengers = {c["id"]: c["model_id"] for c in r.json()["deployment"]["challengers"] if c["is_active"]}
    assert version == 2 and sorted(challengers.values()) == sorted(models[:50])
    r = await rest.patch(slug, {"action": "add_challenger", "model_id": models[50], "traffic_pct": 1})
    assert r.status_code == 422 and r.json()["error"] == "invalid_traffic_config", r.text
    assert "traffic_pct" in r.json()["message"] and "50" in r.json()["message"]
    r = await rest.http.put(f"/v1/deployments/{slug}/traffic", headers=rest.headers(), json={
        **desired, "challengers": [{"model_id": m, "traffic_pct": 1} for m in models]})
    assert r.status_code == 422 and r.json()["error"] == "invalid_traffic_config", r.text
    await inference.wait_for_version(router.address, slug, version, 10)

    for challenger_id in challengers:
        code, seen, variant = await inference.infer(router.address, slug, metadata=[("x-tsplit-variant", challenger_id)])
        assert (code, seen, variant) == ("OK", version, challenger_id)
    n = 1000
    variants = Counter()
    for start in range(0, n, 100):
        answers = await asyncio.gather(*(inference.infer(router.address, slug) for _ in range(100)))
        variants.update(variant for code, _, variant in answers if code == "OK")
    assert sum(variants.values()) == n
    assert abs(variants["champion"] - n / 2) <= 3.29 * math.sqrt(n / 4), variants["champion"]
    assert set(variants) <= {"champion", *challengers} and len(variants) > 30
    status = await rest.get(f"/v1/deployments/{slug}/status")
    rows = {row["variant"]: row for row in status["variants"]}
    assert set(rows) == {"champion", *challengers}
    assert rows["champion"]["traffic_pct"] == 50 and all(rows[c]["traffic_pct"] == 1 for c in challengers)
    print(f"\n50 challengers at 1 %: champion answered {variants['champion']} of {n}; "
          f"{len(variants) - 1} challengers seen in {n} unforced requests")
