"""Target 4: PATCH rate through the REST gateway with 16 concurrent clients, and lost updates.

Each client owns one challenger and flips its traffic_pct between 1 and 2, so every request
changes something (no no-op answers) and 16 challengers stay under the 50 % cap. Two
shapes: all 16 challengers on one deployment (every write races the others for the same
etcd key, the case "no lost update" is about) and one deployment per client (no races: the
gateway and control plane's own cost). Nothing is lost when each deployment's final
cache_version is its first plus its number of 200s and every challenger holds the value its
client last wrote."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from bench import rest

Slot = tuple[str, str]  # (deployment slug, challenger id) one client writes


async def setup(client: httpx.AsyncClient, endpoint: str, writers: int, shared: bool) -> list[Slot]:
    champion = await rest.register_model(client, endpoint, "linear-a")
    slots = []
    slug = await rest.create_deployment(client, champion) if shared else ""
    for i in range(writers):
        if not shared:
            slug = await rest.create_deployment(client, champion)
        model = await rest.register_model(client, endpoint, f"writer-{i}")
        answer = await rest.patch_traffic(client, slug, {"action": "add_challenger", "model_id": model, "traffic_pct": 1})
        slots.append((slug, answer["challenger"]["id"]))
    return slots


async def measure(base_url: str, headers: dict, slots: list[Slot], duration_s: float, warmup_s: float = 1.0) -> dict:
    """Every client writes for warmup_s + duration_s; the rate counts the 200s that arrive
    after the warm-up (new connections, first token checks), lost updates count them all."""
    slugs = sorted({slug for slug, _ in slots})
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        start_versions = {s: (await rest.get_deployment(client, s))["cache_version"] for s in slugs}
    last_written = {slot: 1 for slot in slots}
    ok_by_slug: Counter = Counter()
    failures: Counter = Counter()
    latencies: list[float] = []
    timed_ok = 0
    start = time.perf_counter()
    timed_from = start + warmup_s
    deadline = timed_from + duration_s

    async def writer(slot: Slot) -> None:
        nonlocal timed_ok
        slug, challenger_id = slot
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
            while time.perf_counter() < deadline:
                pct = 2 if last_written[slot] == 1 else 1
                sent = time.perf_counter()
                resp = await client.patch(f"/v1/deployments/{slug}/traffic", json={
                    "action": "update_traffic", "challenger_id": challenger_id, "traffic_pct": pct})
                done = time.perf_counter()
                if sent >= timed_from:
                    latencies.append((done - sent) * 1000)
                if resp.status_code == 200:
                    ok_by_slug[slug] += 1
                    if done >= timed_from:
                        timed_ok += 1
                    last_written[slot] = pct
                else:
                    code = resp.json().get("error", "") if resp.content else ""
                    failures[f"{resp.status_code} {code}"] += 1

    await asyncio.gather(*(writer(slot) for slot in slots))
    elapsed = time.perf_counter() - timed_from
    lost = wrong = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        for slug in slugs:
            final = await rest.get_deployment(client, slug)
            lost += start_versions[slug] + ok_by_slug[slug] - final["cache_version"]
            final_pct = {c["id"]: c["traffic_pct"] for c in final["challengers"]}
            wrong += sum(1 for (s, ch), pct in last_written.items() if s == slug and final_pct.get(ch) != pct)
    ok = sum(ok_by_slug.values())
    return {"writers": len(slots), "deployments": len(slugs), "seconds": round(elapsed, 3), "ok": ok,
            "ok_timed": timed_ok, "failed": sum(failures.values()), "failures": dict(failures), "patch_per_s": timed_ok / elapsed,
            "lost_updates": lost, "challengers_not_last_written": wrong, "latencies_ms": latencies}
