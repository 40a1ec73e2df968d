"""GET /readyz answers 503 while the control plane or etcd is unreachable; GET /docs is a
page (Swagger UI served by the gateway itself, no CDN) that a real headless Chromium loads
and that lists the routes of /openapi.json."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import httpx
import pytest

from controlplane.gateway.client import READY_SERVICE
from controlplane.gateway.openapi import openapi_document
from controlplane.server import READY_SERVICE as SERVED_READY_SERVICE
from tsplit.etcd_server import free_port


def test_gateway_and_control_plane_name_the_same_readiness_service():
    assert READY_SERVICE == SERVED_READY_SERVICE


async def test_readyz_is_200_with_the_control_plane_and_etcd_up(gateway):
    r = await gateway.http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_is_503_while_the_control_plane_is_down(controlplanes, open_gateway):
    cp = await controlplanes.start()
    async with open_gateway(cp.address) as gw:
        assert (await gw.http.get("/readyz")).status_code == 200
        await controlplanes.stop(cp)
        r = await gw.http.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        assert (await gw.http.get("/healthz")).status_code == 200  # alive all the same


async def test_readyz_is_503_while_etcd_is_unreachable(controlplanes, open_gateway):
    cp = await controlplanes.start(etcd_endpoint=f"127.0.0.1:{free_port()}")  # nothing listens there
    async with open_gateway(cp.address) as gw:
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await gw.http.get("/readyz")
        assert r.status_code == 503 and "etcd" in r.json()["message"], r.text
        assert loop.time() - started < 5


async def test_docs_assets_are_served_locally(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        page = await http.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/docs/assets/") for s in sources), sources  # nothing from elsewhere
        for source in sources:
            asset = await http.get(source)
            assert asset.status_code == 200 and len(asset.content) > 1000, source
        missing = await http.get("/docs/assets/..%2F..%2Fcore.py")
        assert missing.status_code == 404


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


async def test_docs_page_lists_the_routes_in_a_real_browser(gateway, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (scripts/setup installs Debian's chromium where apt-get works)")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path}", "--virtual-time-budget=15000", "--dump-dom", f"{gateway.url}/docs"]

    def dump() -> str:
        return subprocess.run(command, capture_output=True, text=True, timeout=90).stdout

    dom = await asyncio.to_thread(dump)
    # Swagger UI renders one block per operation: the method and the path.
    shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert shown, dom[:2000]
    expected = set(openapi_document()["paths"])
    assert expected <= shown, f"not rendered: {sorted(expected - shown)}"
    assert "tsplit REST gateway" in dom
