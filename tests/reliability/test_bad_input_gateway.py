"""schemathesis fuzzes every route of the gateway from the gateway's own /openapi.json,
against a real control plane and etcd: no answer is a 5xx server error, every status is
one the document lists for the route, every body fits the documented schema, and no error
body shows an internal detail. Half the generated slugs and model ids are swapped for real
ones, so that bodies reach the validators behind the 404 check.

TSPLIT_RELIABILITY_FUZZ_EXAMPLES sets the examples per route (default 20)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance)

from controlplane.gateway.openapi import openapi_document
from tsplit.layout import Layout

EXAMPLES = int(os.environ.get("TSPLIT_RELIABILITY_FUZZ_EXAMPLES", "20"))
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    slug: str
    model_id: str
    schema: object


@pytest.fixture(scope="module")
def fuzz_target(etcd_member, dev_auth, rel):
    """A control plane and gateway on a loop of their own (the fuzzer calls synchronously),
    a deployment and a model to aim at, and an admin token."""
    thread = rel.LoopThread()
    system = rel.System([etcd_member.endpoint], Layout(f"/t-fuzz-{uuid.uuid4().hex[:8]}"), dev_auth)
    try:
        controlplane = thread.run(system.controlplane())
        gateway = thread.run(system.gateway(controlplane.address))
        token = dev_auth.token(sub="fuzzer")
        auth = {"authorization": f"Bearer {token}"}
        model = httpx.post(f"{gateway.url}/v1/models", json={"endpoint": "127.0.0.1:9", "model_name": "m"},
                           headers=auth, timeout=10).json()
        other = httpx.post(f"{gateway.url}/v1/models", json={"endpoint": "127.0.0.1:9", "model_name": "n"},
                           headers=auth, timeout=10).json()
        deployment = httpx.post(f"{gateway.url}/v1/deployments", json={"champion_model_id": model["model_id"]},
                                headers=auth, timeout=10).json()
        slug = deployment["deployment_id"]
        r = httpx.patch(f"{gateway.url}/v1/deployments/{slug}/traffic", headers=auth, timeout=10,
                        json={"action": "add_challenger", "model_id": other["model_id"], "traffic_pct": 5})
        assert r.status_code == 200, r.text
        schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
        yield Target(gateway.url, token, slug, model["model_id"], schema)
    finally:
        thread.run(system.close())
        thread.close()


def _cases() -> list:
    """(method, path, mode) for every route: valid inputs, and invalid ones where the route
    takes parameters or a body to break."""
    cases = []
    for path, methods in openapi_document()["paths"].items():
        for method, operation in methods.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody") or "{" in path:
                modes.append(GenerationMode.NEGATIVE)
            cases += [pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
                      for mode in modes]
    return cases


@pytest.mark.parametrize("method, path, mode", _cases())
def test_every_route_answers_as_documented(method, path, mode, fuzz_target, rel):
    operation = fuzz_target.schema[path][method]
    seen = Counter()

    @given(case=operation.as_strategy(generation_mode=mode), aim=st.booleans(), own_token=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case, aim, own_token):
        # Half the time aim at real resources (never DELETE the one deployment), so that
        # bodies get past the 404 check; a valid token unless an invalid case keeps its own.
        if case.path_parameters and aim:
            if "slug" in case.path_parameters and method != "DELETE":
                case.path_parameters["slug"] = fuzz_target.slug
            if "model_id" in case.path_parameters:
                case.path_parameters["model_id"] = fuzz_target.model_id
        if mode == GenerationMode.POSITIVE or not own_token:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_target.token}"}
        response = case.call(timeout=30)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            rel.assert_no_internal_detail(response.text)

    call()
    print(f"{method} {path} {mode.value}: {dict(seen)}")
    assert seen and all(status < 500 for status in seen), seen
    if mode == GenerationMode.POSITIVE:
        assert set(seen) - {401}, "valid cases got past the token check"


def test_huge_bodies_are_refused_early_and_the_gateway_stays_up(fuzz_target, rel):
    headers = {"Authorization": f"Bearer {fuzz_target.token}", "Content-Type": "application/json"}
    huge = b'{"endpoint": "' + b"x" * (16 * 1024 * 1024) + b'"}'

    def chunks():
        for start in range(0, len(huge), 1024 * 1024):
            yield huge[start:start + 1024 * 1024]

    with httpx.Client(base_url=fuzz_target.url, timeout=30) as http:
        for content in (huge, chunks()):  # with and without Content-Length
            r = http.post("/v1/models", content=content, headers=headers)
            assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
            assert r.elapsed.total_seconds() < 5
            rel.assert_no_internal_detail(r.text)
        assert http.get("/healthz").status_code == 200
        assert http.get("/v1/models", headers=headers).status_code == 200
