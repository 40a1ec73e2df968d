"""The gateway's OpenAPI 3.1 document, built from the same OPERATIONS as the router.

Answer schemas are derived from the control-plane messages the way converters.py turns
them into JSON, so the document cannot drift from what the gateway sends; request bodies
are written by hand because the control plane takes them as free JSON (a Struct).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from controlplane.gateway.routes import OPERATIONS, Operation
from tsplit.errors import ERRORS
from tsplit.protojson import ABSENT_WHEN_UNSET
from tsplit.v1 import controlplane_pb2 as pb

# Component name -> the message whose JSON it is.
MESSAGE_SCHEMAS: dict[str, Descriptor] = {
    "Model": pb.Model.DESCRIPTOR,
    "ModelList": pb.ListModelsResponse.DESCRIPTOR,
    "Challenger": pb.Challenger.DESCRIPTOR,
    "Deployment": pb.Deployment.DESCRIPTOR,
    "SlotRange": pb.SlotRange.DESCRIPTOR,
    "DeploymentList": pb.ListDeploymentsResponse.DESCRIPTOR,
    "DeletedDeployment": pb.DeleteDeploymentResponse.DESCRIPTOR,
    "DeletedModel": pb.DeleteModelResponse.DESCRIPTOR,
    "DeploymentChange": pb.DeploymentChange.DESCRIPTOR,
    "History": pb.GetDeploymentHistoryResponse.DESCRIPTOR,
    "HistoryEntry": pb.HistoryEntry.DESCRIPTOR,
    "DeploymentStatus": pb.DeploymentStatus.DESCRIPTOR,
    "RouterSync": pb.RouterSync.DESCRIPTOR,
    "VariantStats": pb.VariantStats.DESCRIPTOR,
}
_COMPONENT_OF = {d.full_name: name for name, d in MESSAGE_SCHEMAS.items()}
_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_INT64: "integer", FieldDescriptor.TYPE_INT32: "integer",
    FieldDescriptor.TYPE_UINT64: "integer", FieldDescriptor.TYPE_UINT32: "integer",
    FieldDescriptor.TYPE_DOUBLE: "number", FieldDescriptor.TYPE_FLOAT: "number",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Struct":
            single: dict[str, Any] = {"type": "object"}
        else:
            single = _ref(_COMPONENT_OF[field.message_type.full_name])
    else:
        single = {"type": _SCALARS[field.type]}
    if field.is_repeated:
        return {"type": "array", "items": single}
    if field.has_presence:
        return {"oneOf": [single, {"type": "null"}]} if "$ref" in single else {"type": [single["type"], "null"]}
    return single


def message_schema(descriptor: Descriptor) -> dict[str, Any]:
    names = [f.name for f in descriptor.fields if not (f.has_presence and f.name in ABSENT_WHEN_UNSET)]
    return {"type": "object", "required": names, "additionalProperties": False,
            "properties": {f.name: _field_schema(f) for f in descriptor.fields}}


_PCT = {"type": "number", "minimum": 1, "maximum": 50,
        "description": "Percent of traffic, at most two decimals; active challengers sum to at most 50."}
_STR = {"type": "string"}
_HTTP_ENDPOINT = {"type": "string", "description": "host:port of the same server's v2 REST port (optional)"}


def _action(name: str, **fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["action", *fields],
            "properties": {"action": {"const": name}, **fields}}


def _change(action: dict[str, Any], **fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "required": ["deployment_id", "action", *fields, "cache_version"],
            "properties": {"deployment_id": _STR, "action": action, **fields, "cache_version": {"type": "integer"}}}


HAND_WRITTEN_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error", "message"], "additionalProperties": False,
              "properties": {"error": {"enum": sorted(ERRORS)}, "message": _STR}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "NewModel": {"type": "object", "required": ["endpoint", "model_name"], "additionalProperties": False, "properties": {
        "endpoint": {"type": "string", "description": "host:port of an Open Inference Protocol v2 gRPC server"},
        "model_name": _STR, "model_version": _STR, "http_endpoint": _HTTP_ENDPOINT,
        "model_id": {"type": "string", "description": "mod_ + 8 url-safe characters; generated when absent"}}},
    "ModelUpdate": {"type": "object", "minProperties": 1, "additionalProperties": False,
                    "description": "The fields given replace the model's; routers follow within the propagation bound",
                    "properties": {
        "endpoint": {"type": "string", "description": "host:port of an Open Inference Protocol v2 gRPC server"},
        "http_endpoint": {"type": ["string", "null"], "description": "host:port of its v2 REST port; \"\" or null: none"},
        "model_name": _STR, "model_version": _STR}},
    "NewDeployment": {"type": "object", "required": ["champion_model_id"], "additionalProperties": False,
                      "properties": {
        "champion_model_id": _STR,
        "deployment_id": {"type": "string", "description": "dep_ + characters; generated when absent"}}},
    "TrafficAction": {"oneOf": [
        _action("add_challenger", model_id=_STR, traffic_pct=_PCT),
        _action("remove_challenger", challenger_id=_STR),
        _action("update_traffic", challenger_id=_STR, traffic_pct=_PCT),
        _action("toggle_shadow", shadow_mode={"type": "boolean"}),
        _action("promote_challenger", challenger_id=_STR),
    ]},
    "TrafficChange": {"oneOf": [
        _change({"enum": ["add_challenger", "remove_challenger", "update_traffic"]}, challenger=_ref("Challenger")),
        _change({"const": "toggle_shadow"}, shadow_mode={"type": "boolean"}),
        _change({"const": "promote_challenger"}, challenger=_ref("Challenger"), champion_model_id=_STR),
    ]},
    "DesiredState": {"type": "object", "required": ["champion", "shadow_mode", "challengers"],
                     "additionalProperties": False, "properties": {
        "deployment": {"type": "string", "description": "when given, the slug of the path"},
        "champion": {"type": "string", "description": "must be the current champion"},
        "shadow_mode": {"type": "boolean"},
        "challengers": {"type": ["array", "null"], "description": "by model; models absent here are removed",
                        "items": {"type": "object", "required": ["model_id", "traffic_pct"], "additionalProperties": False,
                                  "properties": {"model_id": _STR, "traffic_pct": _PCT}}},
        "guardrails": {"oneOf": [_ref("Guardrails"), {"type": "null"}],
                       "description": "absent: the policy stays as it is; {} or null removes it"}}},
    "Guardrails": {"type": "object", "additionalProperties": False,
                   "description": "The guardrail policy (every field optional); {} removes it", "properties": {
        "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5, "default": 0.01},
        "error_rate": {"type": "boolean", "default": True},
        "latency_quantile": {"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                             "default": 0.99},
        "srm": {"type": "boolean", "default": True},
        "steps": {"type": "array", "items": _PCT, "description": "increasing traffic_pct steps"},
        "step_after_requests": {"type": "integer", "minimum": 1, "default": 2000}}},
    "Rollback": {"type": "object", "required": ["to_version"], "additionalProperties": False,
                 "properties": {"to_version": {"type": "integer", "minimum": 1}}},
}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": _STR}
              for name in _path_names(op.path)]
    if op.if_match:
        params.append({"name": "If-Match", "in": "header", "required": False, "schema": _STR,
                       "description": "The cache_version the change expects (4 or \"4\"); 409 version_conflict otherwise"})
    for name in op.query:
        params.append({"name": name, "in": "query", "required": False,
                       "schema": {"type": "integer", "minimum": 0}})
    if op.idempotent_key:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": _STR,
                       "description": "A retry with the same key answers the first result and applies nothing twice"})
    return params


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _responses(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {"description": op.summary,
                               "content": {"application/json": {"schema": _ref(op.response)}}}
    if op.idempotent_key:
        success["headers"] = {"Idempotency-Key": {"schema": _STR, "description": "the key this change is stored under"}}
    responses = {str(op.status): success}
    if op.creates:
        responses["201"] = {**success, "description": "created: " + op.summary}
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in op.errors:
        by_status[ERRORS[code].http_status].append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": ", ".join(codes),
            "content": {"application/json": {"schema": {"allOf": [
                _ref("Error"), {"properties": {"error": {"enum": codes}}}]}}},
        }
    return responses


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "responses": _responses(op)}
    if op.public:
        doc["security"] = []
    params = _parameters(op)
    if params:
        doc["parameters"] = params
    if op.request:
        doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.request)}}}
    return doc


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for op in OPERATIONS:
        paths[op.path][op.method.lower()] = _operation(op)
    paths["/openapi.json"]["get"] = {
        "operationId": "openapi", "summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}}}
    paths["/docs"]["get"] = {
        "operationId": "docs", "summary": "This document as a page (Swagger UI; its files are under /docs/assets/)",
        "security": [], "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}}
    schemas = {name: message_schema(d) for name, d in MESSAGE_SCHEMAS.items()}
    schemas.update(HAND_WRITTEN_SCHEMAS)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "tsplit REST gateway", "version": "1",
                 "description": "A/B and shadow testing of ML models. Errors are "
                                "{\"error\": code, \"message\": text}."},
        "paths": dict(paths),
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
