"""The REST gateway calls the bench makes (SPEC section 4), with errors that name the call."""

from __future__ import annotations

import httpx


class GatewayError(RuntimeError):
    pass


def _check(resp: httpx.Response, what: str, expected: int) -> dict:
    if resp.status_code != expected:
        raise GatewayError(f"{what}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


async def register_model(client: httpx.AsyncClient, endpoint: str, model_name: str) -> str:
    resp = await client.post("/v1/models", json={"endpoint": endpoint, "model_name": model_name})
    return _check(resp, "POST /v1/models", 201)["model_id"]


async def create_deployment(client: httpx.AsyncClient, champion_model_id: str) -> str:
    resp = await client.post("/v1/deployments", json={"champion_model_id": champion_model_id})
    return _check(resp, "POST /v1/deployments", 201)["deployment_id"]


async def patch_traffic(client: httpx.AsyncClient, slug: str, body: dict) -> dict:
    resp = await client.patch(f"/v1/deployments/{slug}/traffic", json=body)
    return _check(resp, f"PATCH /v1/deployments/{slug}/traffic {body.get('action')}", 200)


async def get_deployment(client: httpx.AsyncClient, slug: str) -> dict:
    resp = await client.get(f"/v1/deployments/{slug}")
    return _check(resp, f"GET /v1/deployments/{slug}", 200)
