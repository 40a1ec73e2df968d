from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("model_id", "endpoint", "model_name", "model_version", "org_id", "http_endpoint")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    endpoint: str
    model_name: str
    model_version: str
    org_id: str
    http_endpoint: str
    def __init__(self, model_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., org_id: _Optional[str] = ..., http_endpoint: _Optional[str] = ...) -> None: ...

class Challenger(_message.Message):
    __slots__ = ("id", "model_id", "traffic_pct", "is_active")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PCT_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    traffic_pct: float
    is_active: bool
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., traffic_pct: _Optional[float] = ..., is_active: _Optional[bool] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "org_id", "champion_model_id", "challengers", "shadow_mode", "cache_version", "updated_at", "updated_by", "guardrails", "allocation")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGERS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODE_FIELD_NUMBER: _ClassVar[int]
    CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    org_id: str
    champion_model_id: str
    challengers: _containers.RepeatedCompositeFieldContainer[Challenger]
    shadow_mode: bool
    cache_version: int
    updated_at: str
    updated_by: str
    guardrails: _struct_pb2.Struct
    allocation: _containers.RepeatedCompositeFieldContainer[SlotRange]
    def __init__(self, deployment_id: _Optional[str] = ..., org_id: _Optional[str] = ..., champion_model_id: _Optional[str] = ..., challengers: _Optional[_Iterable[_Union[Challenger, _Mapping]]] = ..., shadow_mode: _Optional[bool] = ..., cache_version: _Optional[int] = ..., updated_at: _Optional[str] = ..., updated_by: _Optional[str] = ..., guardrails: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., allocation: _Optional[_Iterable[_Union[SlotRange, _Mapping]]] = ...) -> None: ...

class SlotRange(_message.Message):
    __slots__ = ("variant", "start", "end")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    variant: str
    start: int
    end: int
    def __init__(self, variant: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("body", "request_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    body: _struct_pb2.Struct
    request_id: str
    def __init__(self, body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class UpdateModelRequest(_message.Message):
    __slots__ = ("model_id", "body", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    body: _struct_pb2.Struct
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("body", "request_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    body: _struct_pb2.Struct
    request_id: str
    def __init__(self, body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "expected_cache_version", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    expected_cache_version: int
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., expected_cache_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class ManageTrafficRequest(_message.Message):
    __slots__ = ("deployment_id", "body", "expected_cache_version", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    body: _struct_pb2.Struct
    expected_cache_version: int
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., expected_cache_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ManageTrafficResponse(_message.Message):
    __slots__ = ("deployment_id", "action", "challenger", "shadow_mode", "cache_version", "deployment", "changed", "champion_model_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CHALLENGER_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODE_FIELD_NUMBER: _ClassVar[int]
    CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    action: str
    challenger: Challenger
    shadow_mode: bool
    cache_version: int
    deployment: Deployment
    changed: bool
    champion_model_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., action: _Optional[str] = ..., challenger: _Optional[_Union[Challenger, _Mapping]] = ..., shadow_mode: _Optional[bool] = ..., cache_version: _Optional[int] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., changed: _Optional[bool] = ..., champion_model_id: _Optional[str] = ...) -> None: ...

class ApplyTrafficRequest(_message.Message):
    __slots__ = ("deployment_id", "body", "expected_cache_version", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    body: _struct_pb2.Struct
    expected_cache_version: int
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., expected_cache_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "body", "expected_cache_version", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    body: _struct_pb2.Struct
    expected_cache_version: int
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., expected_cache_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetGuardrailsRequest(_message.Message):
    __slots__ = ("deployment_id", "body", "expected_cache_version", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    body: _struct_pb2.Struct
    expected_cache_version: int
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., expected_cache_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeploymentChange(_message.Message):
    __slots__ = ("deployment", "changed", "created")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    changed: bool
    created: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., changed: _Optional[bool] = ..., created: _Optional[bool] = ...) -> None: ...

class GetDeploymentHistoryRequest(_message.Message):
    __slots__ = ("deployment_id", "after", "limit")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    after: int
    limit: int
    def __init__(self, deployment_id: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("cache_version", "action", "actor", "at", "config", "request", "request_id", "evidence")
    CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    cache_version: int
    action: str
    actor: str
    at: str
    config: Deployment
    request: _struct_pb2.Struct
    request_id: str
    evidence: _struct_pb2.Struct
    def __init__(self, cache_version: _Optional[int] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., at: _Optional[str] = ..., config: _Optional[_Union[Deployment, _Mapping]] = ..., request: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetDeploymentHistoryResponse(_message.Message):
    __slots__ = ("versions", "more")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    more: bool
    def __init__(self, versions: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class GetDeploymentStatusRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class RouterSync(_message.Message):
    __slots__ = ("router_id", "address", "applied_cache_version", "kind")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    address: str
    applied_cache_version: int
    kind: str
    def __init__(self, router_id: _Optional[str] = ..., address: _Optional[str] = ..., applied_cache_version: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class VariantStats(_message.Message):
    __slots__ = ("variant", "model_id", "traffic_pct", "requests", "ok", "errors", "avg_latency_ms", "mirrored", "mirror_dropped", "label_agreement", "p99_latency_ms", "failovers", "compared", "exact_match_rate", "mean_abs_diff", "mirror_errors", "avg_mirror_latency_ms", "mirror_answers", "forced", "latency_buckets_ms", "latency_counts", "guardrail", "health", "slots")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PCT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    AVG_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    MIRROR_DROPPED_FIELD_NUMBER: _ClassVar[int]
    LABEL_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    EXACT_MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MIRROR_ERRORS_FIELD_NUMBER: _ClassVar[int]
    AVG_MIRROR_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIRROR_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    model_id: str
    traffic_pct: float
    requests: int
    ok: int
    errors: int
    avg_latency_ms: float
    mirrored: int
    mirror_dropped: int
    label_agreement: float
    p99_latency_ms: float
    failovers: int
    compared: int
    exact_match_rate: float
    mean_abs_diff: float
    mirror_errors: int
    avg_mirror_latency_ms: float
    mirror_answers: int
    forced: int
    latency_buckets_ms: _containers.RepeatedScalarFieldContainer[float]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    guardrail: _struct_pb2.Struct
    health: str
    slots: int
    def __init__(self, variant: _Optional[str] = ..., model_id: _Optional[str] = ..., traffic_pct: _Optional[float] = ..., requests: _Optional[int] = ..., ok: _Optional[int] = ..., errors: _Optional[int] = ..., avg_latency_ms: _Optional[float] = ..., mirrored: _Optional[int] = ..., mirror_dropped: _Optional[int] = ..., label_agreement: _Optional[float] = ..., p99_latency_ms: _Optional[float] = ..., failovers: _Optional[int] = ..., compared: _Optional[int] = ..., exact_match_rate: _Optional[float] = ..., mean_abs_diff: _Optional[float] = ..., mirror_errors: _Optional[int] = ..., avg_mirror_latency_ms: _Optional[float] = ..., mirror_answers: _Optional[int] = ..., forced: _Optional[int] = ..., latency_buckets_ms: _Optional[_Iterable[float]] = ..., latency_counts: _Optional[_Iterable[int]] = ..., guardrail: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., health: _Optional[str] = ..., slots: _Optional[int] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("deployment_id", "cache_version", "shadow_mode", "routers", "variants", "etcd_alarms", "guardrails")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MODE_FIELD_NUMBER: _ClassVar[int]
    ROUTERS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    ETCD_ALARMS_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    cache_version: int
    shadow_mode: bool
    routers: _containers.RepeatedCompositeFieldContainer[RouterSync]
    variants: _containers.RepeatedCompositeFieldContainer[VariantStats]
    etcd_alarms: _containers.RepeatedScalarFieldContainer[str]
    guardrails: _struct_pb2.Struct
    def __init__(self, deployment_id: _Optional[str] = ..., cache_version: _Optional[int] = ..., shadow_mode: _Optional[bool] = ..., routers: _Optional[_Iterable[_Union[RouterSync, _Mapping]]] = ..., variants: _Optional[_Iterable[_Union[VariantStats, _Mapping]]] = ..., etcd_alarms: _Optional[_Iterable[str]] = ..., guardrails: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
