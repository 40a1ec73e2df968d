"""etcd out of space (SPEC section 4, storage_full): PATCHes through the real gateway fill an
etcd started with a small --quota-backend-bytes until it raises its NOSPACE alarm. Every
answer is a 200 or a 503 storage_full (never a 500), every change answered 200 is in etcd
(versions contiguous, history complete, the last value of each client stored), reads still
answer, and the alarm shows in the status and in `tsplit routers`' view."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tsplit.cli.reads import read_state
from tsplit.etcd_server import EtcdMember
from tsplit.layout import Layout

QUOTA_BYTES = 1_000_000  # etcd's file grows by doubling: NOSPACE after some hundreds of changes
CLIENTS = 6
MAX_PATCHES_PER_CLIENT = 3000  # bound: far more than the quota holds


@pytest.mark.timeout(400)
async def test_a_full_etcd_answers_503_storage_full_never_500_and_keeps_every_accepted_change(
        tmp_path, controlplanes, open_gateway, layout):
    member = EtcdMember(data_dir=tmp_path / "etcd", quota_backend_bytes=QUOTA_BYTES).start()
    try:
        cp = await controlplanes.start(etcd_endpoint=member.endpoint)
        async with open_gateway(cp.address) as gw:
            slots = []
            for _ in range(CLIENTS):
                slug, _, model = await gw.deploy()
                r = await gw.http.patch(f"/v1/deployments/{slug}/traffic", headers=gw.headers(), json={
                    "action": "add_challenger", "model_id": model, "traffic_pct": 1})
                assert r.status_code == 200, r.text
                slots.append((slug, r.json()["challenger"]["id"]))
            statuses: dict[tuple[int, str], int] = {}
            accepted: dict[str, list[int]] = {slug: [] for slug, _ in slots}

            # The fill skips the fixture's per-answer OpenAPI check (it costs more than the PATCH).
            fill = httpx.AsyncClient(base_url=gw.url, timeout=30)

            async def client(slug: str, challenger: str) -> None:
                for n in range(MAX_PATCHES_PER_CLIENT):
                    pct = 2 + n % 40
                    r = await fill.patch(f"/v1/deployments/{slug}/traffic", headers=gw.headers(), json={
                        "action": "update_traffic", "challenger_id": challenger, "traffic_pct": pct})
                    key = (r.status_code, r.json().get("error", ""))
                    statuses[key] = statuses.get(key, 0) + 1
                    if r.status_code == 200:
                        accepted[slug].append(pct)
                    elif key == (503, "storage_full"):
                        return
                    else:
                        raise AssertionError(f"PATCH answered {r.status_code}: {r.text}")

            async with fill:
                await asyncio.wait_for(asyncio.gather(*(client(*slot) for slot in slots)), 300)
            assert set(statuses) <= {(200, ""), (503, "storage_full")}, statuses
            assert statuses.get((503, "storage_full")) == CLIENTS, statuses
            print(f"accepted before NOSPACE: {statuses.get((200, ''))}")

            # Nothing answered 200 was lost, nothing refused was written.
            for slug, challenger in slots:
                r = await gw.http.get(f"/v1/deployments/{slug}", headers=gw.headers())
                assert r.status_code == 200, r.text
                deployment = r.json()
                assert deployment["cache_version"] == 2 + len(accepted[slug])
                [stored] = [c for c in deployment["challengers"] if c["id"] == challenger]
                assert stored["traffic_pct"] == (accepted[slug][-1] if accepted[slug] else 1)
                versions, after, more = [], 0, True
                while more:
                    r = await gw.http.get(f"/v1/deployments/{slug}/history?after={after}&limit=100",
                                          headers=gw.headers())
                    assert r.status_code == 200, r.text
                    page = r.json()
                    versions += [v["cache_version"] for v in page["versions"]]
                    after, more = versions[-1], page.get("more", False)
                assert versions == list(range(1, deployment["cache_version"] + 1))
                assert page["versions"][-1]["config"]["challengers"][0]["traffic_pct"] == stored["traffic_pct"]

            # Other writes are refused the same way; the alarm is visible to operators.
            r = await gw.http.post("/v1/models", json={"endpoint": "127.0.0.1:1", "model_name": "m"},
                                   headers=gw.headers())
            assert (r.status_code, r.json()["error"]) == (503, "storage_full"), r.text
            r = await gw.http.get(f"/v1/deployments/{slots[0][0]}/status", headers=gw.headers())
            assert r.status_code == 200 and r.json()["etcd_alarms"] == ["NOSPACE"], r.text
            state = await read_state(member.endpoint, Layout(layout.prefix))
            assert state.alarms == ("NOSPACE",)
    finally:
        member.stop()
