"""etcd's database size after N PATCHes through the REST gateway (issue 16's closing figure).

Starts its own etcd (in a temporary folder), a control plane and a gateway in this process,
registers a champion and a challenger model, creates one deployment, then flips the
challenger's traffic_pct between 1 and 2 N times (every PATCH writes a version) without an
Idempotency-Key, as most clients send. Prints etcd's dbSize and dbSizeInUse before and after,
after compacting to the last revision and defragmenting, and the number of keys and bytes of
values under the prefix by kind, as one JSON line.

    .venv/bin/python -m bench.storage_growth --patches 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx

from controlplane.auth import AuthSettings
from controlplane.gateway.server import GatewaySettings, start_gateway
from controlplane.server import start_controlplane
from controlplane.settings import ControlPlaneSettings
from tsplit import devkeys
from tsplit.etcd import Etcd
from tsplit.etcd_server import EtcdMember


async def db_size(endpoint: str) -> dict:
    async with httpx.AsyncClient() as client:  # etcd's grpc-gateway: the Status call
        resp = await client.post(f"http://{endpoint}/v3/maintenance/status", json={})
        body = resp.json()
    return {"db_size": int(body.get("dbSize", 0)), "db_size_in_use": int(body.get("dbSizeInUse", 0))}


async def run(patches: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tsplit-growth-") as tmp:
        member = EtcdMember(data_dir=Path(tmp) / "etcd").start()
        try:
            private_path, public_path = devkeys.write_key_pair(Path(tmp))
            token = devkeys.mint_token(private_path.read_bytes(), sub="bench", org_id="org_1", role="admin")
            auth = AuthSettings(public_key_path=str(public_path), issuer=devkeys.DEV_ISSUER,
                                audience=devkeys.DEV_AUDIENCE)
            plane = await start_controlplane(ControlPlaneSettings(
                auth=auth, listen="127.0.0.1:0", etcd_endpoints=(member.endpoint,), grace_s=0.5))
            gateway = await start_gateway(GatewaySettings(controlplane=plane.address, auth=auth, listen="127.0.0.1:0"))
            try:
                headers = {"authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as client:
                    async def post(path, body):
                        resp = await client.post(path, json=body)
                        assert resp.status_code == 201, resp.text
                        return resp.json()
                    champion = (await post("/v1/models", {"endpoint": "127.0.0.1:1", "model_name": "a"}))["model_id"]
                    slugs, challengers = [], []
                    for i in range(concurrency):
                        model = (await post("/v1/models", {"endpoint": "127.0.0.1:1", "model_name": f"b{i}"}))["model_id"]
                        slug = (await post("/v1/deployments", {"champion_model_id": champion}))["deployment_id"]
                        resp = await client.patch(f"/v1/deployments/{slug}/traffic", json={
                            "action": "add_challenger", "model_id": model, "traffic_pct": 1})
                        slugs.append(slug)
                        challengers.append(resp.json()["challenger"]["id"])
                    before = await db_size(member.endpoint)
                    statuses: dict[int, int] = {}

                    async def writer(slug: str, challenger: str, count: int) -> None:
                        for n in range(count):
                            resp = await client.patch(f"/v1/deployments/{slug}/traffic", json={
                                "action": "update_traffic", "challenger_id": challenger, "traffic_pct": 2 - n % 2})
                            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

                    share = [patches // concurrency + (i < patches % concurrency) for i in range(concurrency)]
                    await asyncio.gather(*(writer(s, c, n) for s, c, n in zip(slugs, challengers, share)))
                after = await db_size(member.endpoint)
                async with Etcd(member.endpoint) as etcd:
                    kvs, revision = await etcd.get_prefix("/tsplit/")
                    # What stays once old revisions are compacted away and the file defragmented.
                    await etcd.compact(revision)
                    await etcd.defragment()
                compacted = await db_size(member.endpoint)
                keys: dict[str, int] = {}
                value_bytes: dict[str, int] = {}
                for kv in kvs:
                    kind = kv.key.split("/")[2]
                    keys[kind] = keys.get(kind, 0) + 1
                    value_bytes[kind] = value_bytes.get(kind, 0) + len(kv.value)
                return {"patches": patches, "statuses": statuses, "before": before, "after": after,
                        "after_compact_defrag": compacted, "keys": keys, "value_bytes": value_bytes}
            finally:
                await gateway.stop()
                await plane.stop(0)
        finally:
            member.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="clients, each on a deployment of its own")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.patches, args.concurrency))))


if __name__ == "__main__":
    main()
