"""Target 4: PATCH rate through the REST gateway with 16 concurrent clients, and lost updates.

Client i owns challenger i and flips its traffic_pct between 1 and 2, so every request
changes something (no no-op answers) and 16 challengers stay under the 50 % cap. Nothing is
lost when the final cache_version is the first plus the number of 200s and every
challenger holds the value its client last wrote."""

from __future__ import annotations

import asyncio
import time

import httpx

from bench import rest


async def setup(client: httpx.AsyncClient, endpoint: str, writers: int) -> tuple[str, list[str]]:
    champion = await rest.register_model(client, endpoint, "linear-a")
    slug = await rest.create_deployment(client, champion)
    challengers = []
    for i in range(writers):
        model = await rest.register_model(client, endpoint, f"writer-{i}")
        answer = await rest.patch_traffic(client, slug, {"action": "add_challenger", "model_id": model, "traffic_pct": 1})
        challengers.append(answer["challenger"]["id"])
    return slug, challengers


async def measure(base_url: str, headers: dict, slug: str, challengers: list[str], duration_s: float) -> dict:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        start_version = (await rest.get_deployment(client, slug))["cache_version"]
    last_written = {ch: 1 for ch in challengers}
    ok = failed = 0
    failures: dict[str, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def writer(challenger_id: str) -> None:
        nonlocal ok, failed
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
            while time.perf_counter() < deadline:
                pct = 2 if last_written[challenger_id] == 1 else 1
                sent = time.perf_counter()
                resp = await client.patch(f"/v1/deployments/{slug}/traffic", json={
                    "action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct})
                latencies.append((time.perf_counter() - sent) * 1000)
                if resp.status_code == 200:
                    ok += 1
                    last_written[challenger_id] = pct
                else:
                    failed += 1
                    key = f"{resp.status_code} {resp.json().get('error', '') if resp.content else ''}"
                    failures[key] = failures.get(key, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(writer(ch) for ch in challengers))
    elapsed = time.perf_counter() - start
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        final = await rest.get_deployment(client, slug)
    final_pct = {c["id"]: c["traffic_pct"] for c in final["challengers"]}
    wrong = sum(1 for ch, pct in last_written.items() if final_pct.get(ch) != pct)
    lost = start_version + ok - final["cache_version"]
    return {"writers": len(challengers), "seconds": round(elapsed, 3), "ok": ok, "failed": failed,
            "failures": failures, "patch_per_s": ok / elapsed, "lost_updates": lost,
            "challengers_not_last_written": wrong, "latencies_ms": latencies}
