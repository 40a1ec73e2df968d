"""/openapi.json is a valid OpenAPI 3 document and true to the routes: every served route is
documented and every documented route is served. (Every answer of the other gateway tests
is also checked against it: status documented, body fits the schema; see conftest.)"""

from __future__ import annotations

import re

from openapi_spec_validator import validate as validate_spec
from starlette.routing import Route

from controlplane.gateway.app import build_app
from controlplane.gateway.openapi import openapi_document
from controlplane.gateway.routes import OPERATIONS, Handlers
from tsplit.errors import ERRORS

SPEC_TABLE = {  # SPEC section 4's error table
    "invalid_json": 400, "unauthorized": 401, "forbidden": 403, "deployment_not_found": 404, "model_not_found": 404,
    "already_exists": 409, "version_conflict": 409, "payload_too_large": 413, "unsupported_media_type": 415,
    "invalid_traffic_config": 422, "invalid_request": 422, "unavailable": 503, "commit_unknown": 503,
    "model_in_use": 409,
}
SPEC_ROUTES = {
    ("PATCH", "/v1/deployments/{slug}/traffic"), ("POST", "/v1/models"), ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"), ("POST", "/v1/deployments"), ("GET", "/v1/deployments"),
    ("GET", "/v1/deployments/{slug}"), ("DELETE", "/v1/deployments/{slug}"),
    ("GET", "/v1/deployments/{slug}/history"), ("POST", "/v1/deployments/{slug}/rollback"),
    ("PUT", "/v1/deployments/{slug}/traffic"), ("GET", "/v1/deployments/{slug}/status"),
    ("GET", "/openapi.json"), ("GET", "/healthz"), ("PUT", "/v1/deployments/{slug}/guardrails"),
    ("PATCH", "/v1/models/{model_id}"), ("DELETE", "/v1/models/{model_id}"), ("GET", "/readyz"), ("GET", "/docs"),
}


def _documented(document) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3():
    document = openapi_document()
    assert document["openapi"].startswith("3.")
    validate_spec(document)


def test_the_error_table_and_the_spec_routes_are_documented():
    assert all(ERRORS[code].http_status == status for code, status in SPEC_TABLE.items())
    assert _documented(openapi_document()) == SPEC_ROUTES
    documented_codes = set()
    for item in openapi_document()["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", ()):
                    codes = part.get("properties", {}).get("error", {}).get("enum", ())
                    assert all(ERRORS[c].http_status == int(status) for c in codes)
                    documented_codes.update(codes)
    assert set(SPEC_TABLE) <= documented_codes


def test_served_routes_equal_documented_routes():
    app = build_app(Handlers(client=None, authenticate=None, require_mutation=None, max_body_bytes=1))
    served = {(method, route.path) for route in app.routes if isinstance(route, Route)
              for method in route.methods if method != "HEAD"}
    assert served == _documented(openapi_document())


async def test_the_live_document_needs_no_token_and_every_documented_route_answers(gateway):
    r = await gateway.http.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document == openapi_document()
    slug, champion, _ = await gateway.deploy()
    values = {"slug": slug, "model_id": champion}
    for method, path in sorted(_documented(document)):
        concrete = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        r = await gateway.http.request(method, concrete, json={} if method in ("POST", "PUT", "PATCH") else None,
                                       headers=gateway.headers(role="viewer"))
        # A viewer gets the read, or 403 for a change: either way the route exists.
        assert r.status_code in (200, 403), (method, concrete, r.text)
        if r.status_code == 403:
            assert method != "GET" and r.json()["error"] == "forbidden"


def test_operation_ids_are_unique_and_name_handlers():
    names = [op.name for op in OPERATIONS]
    assert len(names) == len(set(names))
    assert all(callable(getattr(Handlers, name)) for name in names)
