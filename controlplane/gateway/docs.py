"""The gateway's /docs page: Swagger UI rendering /openapi.json, from assets the gateway
serves itself under /docs/assets/ (fastapi-offline vendors Swagger UI's bundle; no CDN,
works offline).

The assets are found without importing fastapi_offline (which would import FastAPI).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from controlplane.gateway.responses import json_response

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tsplit REST gateway: API</title>
  <link rel="icon" href="/docs/assets/favicon.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                                 defaultModelsExpandDepth: 0});
  </script>
</body>
</html>
"""


@lru_cache(maxsize=1)
def assets_dir() -> Path | None:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


async def docs_asset(request: Request) -> Response:
    """One of ASSETS; a 404 JSON like any unknown route otherwise."""
    name = request.path_params["name"]
    folder = assets_dir()
    if name not in ASSETS or folder is None:
        return json_response({"error": "not_found", "message": f"no route {request.url.path}"}, 404)
    return FileResponse(folder / name, media_type=ASSETS[name], headers={"cache-control": "max-age=86400"})
