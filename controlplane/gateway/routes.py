"""The REST routes (SPEC section 4): each maps to one control-plane RPC.

OPERATIONS is the one list both the router and the OpenAPI document are built from.
Every handler answers in the SPEC's order: token (401), the resource in the caller's org
(404), role (403), then body and headers (400, 413, 415, 422); the control plane answers
the rest (422 validation, 409, 503). A change to a deployment goes to the control plane
in one call, which checks 404 before 403 and 422 itself (see _deployment_change_input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from controlplane.gateway.client import ControlPlaneClient
from controlplane.gateway.request_input import (
    check_media_type, expected_version, idempotency_key, parse_json_object, read_limited)
from controlplane.gateway.responses import json_response
from tsplit.errors import ApiError
from tsplit.protojson import message_to_json, struct_from_json, traffic_change_to_json
from tsplit.v1 import controlplane_pb2 as pb

AUTH = ("unauthorized", "unavailable", "internal")
BODY = ("invalid_json", "payload_too_large", "unsupported_media_type", "invalid_request")
MUTATION = AUTH + ("forbidden", "commit_unknown", "storage_full")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    name: str  # the handler's name and the OpenAPI operationId
    summary: str
    status: int  # on success
    response: str  # schema name of the success body
    request: str | None = None  # schema name of the JSON body
    errors: tuple[str, ...] = AUTH
    public: bool = False  # no token needed
    if_match: bool = False  # takes If-Match
    idempotent_key: bool = False  # takes Idempotency-Key
    query: tuple[str, ...] = ()  # integer query parameters it takes
    creates: bool = False  # may also answer 201 with the same body (apply on a new slug)


SLUG = "/v1/deployments/{slug}"
OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", "healthz", "Liveness of the gateway process", 200, "Health",
              errors=(), public=True),
    Operation("GET", "/readyz", "readyz", "Readiness: the control plane answers and reaches etcd (503 otherwise)",
              200, "Health", errors=("unavailable",), public=True),
    Operation("POST", "/v1/models", "register_model", "Register a model served by an OIP v2 endpoint",
              201, "Model", "NewModel", MUTATION + BODY + ("already_exists",), idempotent_key=True),
    Operation("GET", "/v1/models", "list_models", "The caller's org's models", 200, "ModelList"),
    Operation("GET", "/v1/models/{model_id}", "get_model", "One model", 200, "Model",
              errors=AUTH + ("model_not_found",)),
    Operation("PATCH", "/v1/models/{model_id}", "update_model",
              "Change a model's endpoint, http_endpoint, model_name or model_version (routers follow)",
              200, "Model", "ModelUpdate", MUTATION + BODY + ("model_not_found",), idempotent_key=True),
    Operation("DELETE", "/v1/models/{model_id}", "delete_model",
              "Delete a model no deployment uses (409 model_in_use otherwise)", 200, "DeletedModel", None,
              MUTATION + ("model_not_found", "model_in_use", "invalid_request"), idempotent_key=True),
    Operation("POST", "/v1/deployments", "create_deployment", "Create a deployment with a champion",
              201, "Deployment", "NewDeployment", MUTATION + BODY + ("already_exists",), idempotent_key=True),
    Operation("GET", "/v1/deployments", "list_deployments", "The caller's org's deployments", 200,
              "DeploymentList"),
    Operation("GET", SLUG, "get_deployment", "One deployment's current config", 200, "Deployment",
              errors=AUTH + ("deployment_not_found",)),
    Operation("DELETE", SLUG, "delete_deployment", "Delete a deployment (its history and slug stay)",
              200, "DeletedDeployment", None,
              MUTATION + ("deployment_not_found", "version_conflict", "invalid_request"),
              if_match=True, idempotent_key=True),
    Operation("PATCH", f"{SLUG}/traffic", "manage_traffic",
              "Add, remove, reweigh or promote a challenger, or toggle shadow mode",
              200, "TrafficChange", "TrafficAction",
              MUTATION + BODY + ("deployment_not_found", "version_conflict", "invalid_traffic_config"),
              if_match=True, idempotent_key=True),
    Operation("PUT", f"{SLUG}/traffic", "apply_traffic",
              "Apply a desired state as one change; a slug that never existed is created (201, version 1)", 200,
              "DeploymentChange", "DesiredState",
              MUTATION + BODY + ("deployment_not_found", "version_conflict", "invalid_traffic_config", "already_exists"),
              if_match=True, idempotent_key=True, creates=True),
    Operation("POST", f"{SLUG}/rollback", "rollback_deployment", "Restore the traffic of an earlier version",
              200, "DeploymentChange", "Rollback",
              MUTATION + BODY + ("deployment_not_found", "version_conflict", "invalid_traffic_config"),
              if_match=True, idempotent_key=True),
    Operation("PUT", f"{SLUG}/guardrails", "set_guardrails", "Set the guardrail policy ({} removes it)",
              200, "DeploymentChange", "Guardrails",
              MUTATION + BODY + ("deployment_not_found", "version_conflict"),
              if_match=True, idempotent_key=True),
    Operation("GET", f"{SLUG}/history", "deployment_history",
              "The versions after ?after=N (default 0), oldest first, at most ?limit=M (default and most 1000); "
              "more: true when more follow", 200, "History",
              errors=AUTH + ("deployment_not_found", "invalid_request"), query=("after", "limit")),
    Operation("GET", f"{SLUG}/status", "deployment_status", "Router sync and per-variant stats", 200,
              "DeploymentStatus", errors=AUTH + ("deployment_not_found",)),
)


@dataclass(frozen=True)
class Caller:
    principal: Any
    authorization: str  # passed to the control plane as gRPC metadata


Authenticate = Callable[[str | None], Any]  # the Authorization header -> Principal, or ApiError
RequireMutation = Callable[[Any], None]  # Principal -> None, or ApiError forbidden


class Handlers:
    """One method per Operation.name."""

    def __init__(self, client: ControlPlaneClient, authenticate: Authenticate,
                 require_mutation: RequireMutation, max_body_bytes: int):
        self._client = client
        self._authenticate = authenticate
        self._require_mutation = require_mutation
        self._max_body_bytes = max_body_bytes

    def endpoint(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        return getattr(self, name)

    # --- the checks, in order -------------------------------------------------------

    def _caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        return Caller(self._authenticate(header), header)

    async def _deployment_change_input(self, request: Request, with_body: bool = True):
        """Caller, slug, body, If-Match version and Idempotency-Key of a change to the
        deployment in the path (see _change_input)."""
        slug = request.path_params["slug"]
        caller, body, version, key = await self._change_input(
            request, with_body, "GetDeployment", pb.GetDeploymentRequest(deployment_id=slug))
        return caller, slug, body, version, key

    async def _change_input(self, request: Request, with_body: bool, read_method: str, read_request):
        """Caller, body, If-Match version and Idempotency-Key of a change to the resource in
        the path, which read_method reads.

        The control plane itself checks the resource (404) before the role (403) and the
        body (422), so a well-formed request costs one call. Only when the gateway has a
        verdict of its own (403, or 400/413/415/422 on the body or headers) does it first
        read the resource, so that a 404 still comes first.
        """
        caller = self._caller(request)
        try:
            body, version, key = await self._mutation_input(request, caller, with_body)
        except ApiError:
            await self._client.read(read_method, read_request, caller.authorization)
            raise
        return caller, body, version, key

    async def _body(self, request: Request) -> dict[str, Any]:
        check_media_type(request.headers)
        raw = await read_limited(request.stream(), request.headers.get("content-length"), self._max_body_bytes)
        return parse_json_object(raw)

    async def _mutation_input(self, request: Request, caller: Caller, with_body: bool = True):
        self._require_mutation(caller.principal)
        body = await self._body(request) if with_body else None
        return body, expected_version(request.headers), idempotency_key(request.headers)

    # --- handlers ---------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problem = await self._client.ready()
        if problem is not None:
            raise ApiError("unavailable", f"not ready: {problem}")
        return json_response({"status": "ok"})

    async def register_model(self, request: Request) -> Response:
        caller = self._caller(request)
        body, _, key = await self._mutation_input(request, caller)
        model = await self._client.mutate(
            "RegisterModel", pb.RegisterModelRequest(body=struct_from_json(body), request_id=key),
            caller.authorization, key)
        return json_response(message_to_json(model), 201, idempotency_key=key)

    async def list_models(self, request: Request) -> Response:
        caller = self._caller(request)
        answer = await self._client.read("ListModels", pb.ListModelsRequest(), caller.authorization)
        return json_response(message_to_json(answer))

    async def get_model(self, request: Request) -> Response:
        caller = self._caller(request)
        model = await self._client.read(
            "GetModel", pb.GetModelRequest(model_id=request.path_params["model_id"]), caller.authorization)
        return json_response(message_to_json(model))

    async def _model_change_input(self, request: Request, with_body: bool):
        """Caller, model id, body and Idempotency-Key of a change to the model in the path."""
        model_id = request.path_params["model_id"]
        caller, body, _, key = await self._change_input(
            request, with_body, "GetModel", pb.GetModelRequest(model_id=model_id))
        return caller, model_id, body, key

    async def update_model(self, request: Request) -> Response:
        caller, model_id, body, key = await self._model_change_input(request, with_body=True)
        model = await self._client.mutate(
            "UpdateModel", pb.UpdateModelRequest(model_id=model_id, body=struct_from_json(body), request_id=key),
            caller.authorization, key)
        return json_response(message_to_json(model), idempotency_key=key)

    async def delete_model(self, request: Request) -> Response:
        caller, model_id, _, key = await self._model_change_input(request, with_body=False)
        answer = await self._client.mutate(
            "DeleteModel", pb.DeleteModelRequest(model_id=model_id, request_id=key), caller.authorization, key)
        return json_response(message_to_json(answer), idempotency_key=key)

    async def create_deployment(self, request: Request) -> Response:
        caller = self._caller(request)
        body, _, key = await self._mutation_input(request, caller)
        deployment = await self._client.mutate(
            "CreateDeployment", pb.CreateDeploymentRequest(body=struct_from_json(body), request_id=key),
            caller.authorization, key)
        return json_response(message_to_json(deployment), 201, idempotency_key=key,
                             cache_version=deployment.cache_version)

    async def list_deployments(self, request: Request) -> Response:
        caller = self._caller(request)
        answer = await self._client.read("ListDeployments", pb.ListDeploymentsRequest(), caller.authorization)
        return json_response(message_to_json(answer))

    async def get_deployment(self, request: Request) -> Response:
        caller = self._caller(request)
        deployment = await self._client.read(
            "GetDeployment", pb.GetDeploymentRequest(deployment_id=request.path_params["slug"]),
            caller.authorization)
        return json_response(message_to_json(deployment), cache_version=deployment.cache_version)

    async def delete_deployment(self, request: Request) -> Response:
        caller, slug, _, version, key = await self._deployment_change_input(request, with_body=False)
        answer = await self._client.mutate(
            "DeleteDeployment",
            pb.DeleteDeploymentRequest(deployment_id=slug, expected_cache_version=version, request_id=key),
            caller.authorization, key)
        return json_response(message_to_json(answer), idempotency_key=key)

    async def manage_traffic(self, request: Request) -> Response:
        caller, slug, body, version, key = await self._deployment_change_input(request)
        answer = await self._client.mutate(
            "ManageTraffic",
            pb.ManageTrafficRequest(deployment_id=slug, body=struct_from_json(body),
                                    expected_cache_version=version, request_id=key),
            caller.authorization, key)
        return json_response(traffic_change_to_json(answer), idempotency_key=key,
                             cache_version=answer.cache_version)

    async def _deployment_change(self, request: Request, method: str, message) -> Response:
        """A change whose answer is a DeploymentChange (apply, rollback, set_guardrails)."""
        caller, slug, body, version, key = await self._deployment_change_input(request)
        answer = await self._client.mutate(
            method, message(deployment_id=slug, body=struct_from_json(body), expected_cache_version=version,
                            request_id=key),
            caller.authorization, key)
        return json_response(message_to_json(answer), 201 if answer.created else 200, idempotency_key=key,
                             cache_version=answer.deployment.cache_version)

    async def apply_traffic(self, request: Request) -> Response:
        return await self._deployment_change(request, "ApplyTraffic", pb.ApplyTrafficRequest)

    async def rollback_deployment(self, request: Request) -> Response:
        return await self._deployment_change(request, "RollbackDeployment", pb.RollbackDeploymentRequest)

    async def set_guardrails(self, request: Request) -> Response:
        return await self._deployment_change(request, "SetGuardrails", pb.SetGuardrailsRequest)

    async def deployment_history(self, request: Request) -> Response:
        caller = self._caller(request)
        after, limit = (_count_param(request, name) for name in ("after", "limit"))
        answer = await self._client.read(
            "GetDeploymentHistory",
            pb.GetDeploymentHistoryRequest(deployment_id=request.path_params["slug"], after=after, limit=limit),
            caller.authorization)
        return json_response(message_to_json(answer))

    async def deployment_status(self, request: Request) -> Response:
        caller = self._caller(request)
        answer = await self._client.read(
            "GetDeploymentStatus", pb.GetDeploymentStatusRequest(deployment_id=request.path_params["slug"]),
            caller.authorization)
        return json_response(message_to_json(answer))


_MAX_COUNT = 2**31 - 1  # the gRPC fields are 32-bit


def _count_param(request: Request, name: str) -> int:
    """A non-negative integer query parameter (0 when absent)."""
    text = request.query_params.get(name, "0")
    if not text.isdigit() or len(text) > 10 or int(text) > _MAX_COUNT:
        raise ApiError("invalid_request", f"query parameter {name} must be a whole number from 0 to {_MAX_COUNT}")
    return int(text)
