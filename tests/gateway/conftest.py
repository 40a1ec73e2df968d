"""Gateway fixtures: a real control plane on the session etcd, a real gateway (uvicorn) in
front of it on a free port, and an httpx client that checks every answer against the
gateway's own OpenAPI document."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from openapi_schema_validator import validate

from controlplane.auth import AuthSettings
from controlplane.gateway.client import CallTimeouts
from controlplane.gateway.openapi import openapi_document
from controlplane.gateway.server import GatewaySettings, start_gateway
from controlplane.server import start_controlplane
from controlplane.settings import ControlPlaneSettings

DOCUMENT = openapi_document()
_TEMPLATES = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path) for path in DOCUMENT["paths"]]


def documented_template(path: str) -> str | None:
    """The OpenAPI path a concrete path falls under (the most literal one first)."""
    matches = [template for regex, template in _TEMPLATES if regex.match(path)]
    return min(matches, key=lambda t: t.count("{")) if matches else None


def check_documented(response: httpx.Response) -> None:
    """The answer's status is documented for its route, and its body fits the schema."""
    request = response.request
    template = documented_template(request.url.path)
    if template is None or request.method.lower() not in DOCUMENT["paths"][template]:
        body = response.json()
        assert (response.status_code, body["error"]) in ((404, "not_found"), (405, "method_not_allowed")), body
        return
    operation = DOCUMENT["paths"][template][request.method.lower()]
    assert str(response.status_code) in operation["responses"], (
        f"{request.method} {template} answered {response.status_code}, which its OpenAPI entry does not list: "
        f"{response.text}")
    documented = operation["responses"][str(response.status_code)].get("content", {})
    if "text/html" in documented:
        assert response.headers["content-type"].startswith("text/html")
        return
    content = documented.get("application/json", {})
    assert response.headers["content-type"].startswith("application/json")
    if "schema" in content:
        validate(response.json(), {**content["schema"], "components": DOCUMENT["components"]})


def auth_settings(dev_auth) -> AuthSettings:
    return AuthSettings(public_key_path=str(dev_auth.public_path), issuer=dev_auth.issuer, audience=dev_auth.audience)


class ControlPlanes:
    """Starts control planes on the session etcd (or another) and stops what is left at the end."""

    def __init__(self, etcd_endpoint: str, prefix: str, dev_auth):
        self.etcd_endpoint, self.prefix, self.dev_auth = etcd_endpoint, prefix, dev_auth
        self.running: list = []

    async def start(self, etcd_endpoint: str | None = None, listen: str = "127.0.0.1:0"):
        settings = ControlPlaneSettings(
            auth=auth_settings(self.dev_auth), listen=listen,
            etcd_endpoints=(etcd_endpoint or self.etcd_endpoint,), etcd_prefix=self.prefix, grace_s=0.5)
        server = await start_controlplane(settings)
        self.running.append(server)
        return server

    async def stop(self, server) -> None:
        self.running.remove(server)
        await server.stop(0)


@pytest.fixture
async def controlplanes(etcd_member, layout, dev_auth):
    planes = ControlPlanes(etcd_member.endpoint, layout.prefix, dev_auth)
    yield planes
    for server in list(planes.running):
        await planes.stop(server)


@pytest.fixture
async def cp(controlplanes):
    """A control plane of this test's own."""
    return await controlplanes.start()


@dataclass
class Gateway:
    url: str
    http: httpx.AsyncClient
    auth: object  # tests/conftest.py DevAuth

    def headers(self, **token_claims) -> dict[str, str]:
        return self.auth.headers(**token_claims)

    async def register(self, name: str = "iris", **body) -> dict:
        r = await self.http.post("/v1/models", json={"endpoint": "127.0.0.1:9001", "model_name": name, **body},
                                 headers=self.headers())
        assert r.status_code == 201, r.text
        return r.json()

    async def create_deployment(self, champion: str, slug: str | None = None) -> dict:
        body = {"champion_model_id": champion, **({"deployment_id": slug} if slug else {})}
        r = await self.http.post("/v1/deployments", json=body, headers=self.headers())
        assert r.status_code == 201, r.text
        return r.json()

    async def deploy(self) -> tuple[str, str, str]:
        """(slug, champion model_id, a second model_id) of a new deployment at cache_version 1."""
        champion, other = await self.register("champ"), await self.register("chall")
        deployment = await self.create_deployment(champion["model_id"])
        return deployment["deployment_id"], champion["model_id"], other["model_id"]


async def _checked(response: httpx.Response) -> None:
    await response.aread()
    check_documented(response)


def gateway_settings(controlplane_address: str, dev_auth, **kw) -> GatewaySettings:
    kw.setdefault("timeouts", CallTimeouts(connect_s=1.0, mutation_s=15.0))
    return GatewaySettings(controlplane=controlplane_address, auth=auth_settings(dev_auth), listen="127.0.0.1:0", **kw)


@pytest.fixture
def open_gateway(dev_auth):
    """open_gateway(control-plane address, **GatewaySettings fields): an async context
    manager yielding a Gateway served by uvicorn on a free port."""
    @asynccontextmanager
    async def open_(address: str, **settings):
        running = await start_gateway(gateway_settings(address, dev_auth, **settings))
        try:
            async with httpx.AsyncClient(base_url=running.url, timeout=30,
                                         event_hooks={"response": [_checked]}) as http:
                yield Gateway(running.url, http, dev_auth)
        finally:
            await running.stop()
    return open_


@pytest.fixture
async def gateway(cp, open_gateway):
    async with open_gateway(cp.address) as gw:
        yield gw
