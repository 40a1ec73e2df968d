"""The gateway's ASGI app: OPERATIONS as routes, and every failure as JSON.

Unknown routes answer 404 not_found, wrong methods 405 method_not_allowed, ApiError its
own status, and anything unexpected 500 internal with the traceback in the log only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from controlplane.gateway.docs import docs_asset, docs_page
from controlplane.gateway.openapi import openapi_document
from controlplane.gateway.responses import json_response
from controlplane.gateway.routes import OPERATIONS, Handlers
from tsplit.errors import ApiError

log = logging.getLogger("tsplit.gateway")
Endpoint = Callable[[Request], Awaitable[Response]]


def _error(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": code, "message": message}, status, headers=headers)


async def _http_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    if err.status_code == 404:
        return _error("not_found", f"no route {request.url.path}", 404)
    if err.status_code == 405:
        return _error("method_not_allowed", f"{request.method} is not allowed on {request.url.path}", 405,
                      headers=dict(err.headers or {}))
    return _error("internal", "internal error", 500)


async def _unexpected_error(request: Request, err: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
    return _error("internal", "internal error", 500)


def _dispatcher(by_method: dict[str, Endpoint]) -> Endpoint:
    """One endpoint per path, so that a 405 names every method the path takes."""
    async def endpoint(request: Request) -> Response:
        handler = by_method[request.method if request.method != "HEAD" else "GET"]
        try:
            return await handler(request)
        except ApiError as err:
            return _error(err.code, err.message, err.kind.http_status)
        except Exception as err:  # the boundary: users get JSON, the log gets the traceback
            return await _unexpected_error(request, err)
    return endpoint


def build_app(handlers: Handlers) -> Starlette:
    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return json_response(document)

    by_path: dict[str, dict[str, Endpoint]] = defaultdict(dict)
    for op in OPERATIONS:
        by_path[op.path][op.method] = handlers.endpoint(op.name)
    by_path["/openapi.json"]["GET"] = openapi
    by_path["/docs"]["GET"] = docs_page
    routes = [Route(path, _dispatcher(by_method), methods=list(by_method)) for path, by_method in by_path.items()]
    routes.append(Mount("/docs/assets", routes=[Route("/{name}", docs_asset, methods=["GET"])]))  # the page's files
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _unexpected_error})
    app.router.redirect_slashes = False  # "/v1/models/" is 404 JSON, not a bodiless redirect
    return app
