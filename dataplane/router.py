"""The router's Open Inference Protocol v2 service: raw bytes in, raw bytes out.

Served with a generic handler and identity (de)serializers: ModelInfer reads the request's
model name from its top-level fields (dataplane.wire), picks a variant, appends the
variant's model name and version and forwards the bytes over one reused channel per
backend; the backend's answer goes back as it came, with response metadata naming the
variant. Tensors are never parsed here.

Errors: a backend's status (code and details) passes through unchanged, deadline included;
the router's own are INVALID_ARGUMENT (not a ModelInferRequest, no model name, unknown
x-tsplit-variant), NOT_FOUND (no such deployment) and UNAVAILABLE (no config loaded yet).
A challenger whose backend answers UNAVAILABLE has given no answer (a unary call that
fails never produced a response), so the request is retried on the champion and counted
as a failover.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from importlib import metadata as importlib_metadata
from typing import Callable, Sequence

import grpc

from dataplane import wire
from dataplane.mirror import MirrorDispatcher
from dataplane.routing import DeploymentRoute, RoutingTable, UnknownVariant, Variant
from dataplane.stats import RouterStats
from tsplit.inference import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
ROUTING_KEY_HEADER = "x-routing-key"
FORCED_VARIANT_HEADER = "x-tsplit-variant"
MODEL_ID_HEADER = "tsplit-model-id"
VARIANT_HEADER = "tsplit-variant"
CACHE_VERSION_HEADER = "tsplit-cache-version"
SERVER_NAME = "tsplit-router"

# Client metadata that is about this hop, not for the backend.
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "host", "grpc-timeout", "grpc-encoding",
                          "grpc-accept-encoding", "grpc-message-type"})


def _package_version() -> str:
    try:
        return importlib_metadata.version("tsplit")
    except importlib_metadata.PackageNotFoundError:
        return "0"


class Backend:
    """One reused channel to a v2 server and its three raw-bytes methods."""

    def __init__(self, endpoint: str, options: Sequence[tuple[str, object]]) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(endpoint, options=list(options))
        self.infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
        self.model_ready = self.channel.unary_unary(f"/{SERVICE}/ModelReady")
        self.model_metadata = self.channel.unary_unary(f"/{SERVICE}/ModelMetadata")


BACKEND_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    # Tensors can be large; the client already chose what it sends.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A restarted model server is used again within a second or two, not after grpc's
    # default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


class BackendPool:
    """Channels to backends by endpoint, created on first use and reused."""

    def __init__(self, options: Sequence[tuple[str, object]] = BACKEND_CHANNEL_OPTIONS,
                 close_grace_s: float = 30.0) -> None:
        self._options = tuple(options)
        self._backends: dict[str, Backend] = {}
        self._close_grace_s = close_grace_s
        self._retiring: dict[asyncio.Task, Backend] = {}

    def get(self, endpoint: str) -> Backend:
        backend = self._backends.get(endpoint)
        if backend is None:
            backend = self._backends[endpoint] = Backend(endpoint, self._options)
        return backend

    async def infer(self, endpoint: str, request: bytes, timeout: float | None) -> bytes:
        return await self.get(endpoint).infer(request, timeout=timeout)

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(self._backends)

    def retain(self, endpoints: set[str] | frozenset[str]) -> None:
        """Close, after a grace period for calls in flight, the channels to endpoints no
        longer in use."""
        for endpoint in [e for e in self._backends if e not in endpoints]:
            backend = self._backends.pop(endpoint)
            task = asyncio.get_running_loop().create_task(backend.channel.close(self._close_grace_s))
            self._retiring[task] = backend
            task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def close(self) -> None:
        """Close every channel now (calls in flight are cancelled)."""
        backends, self._backends = list(self._backends.values()), {}
        retiring, self._retiring = dict(self._retiring), {}
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await asyncio.gather(*(b.channel.close(None) for b in [*backends, *retiring.values()]),
                             return_exceptions=True)


@functools.lru_cache(maxsize=4096)
def _model_ref_suffix(model_name: str, model_version: str) -> bytes:
    return wire.model_ref_suffix(model_name, model_version)


def rewrite(variant: Variant, request: bytes) -> bytes:
    """The request as variant's backend gets it: its model name and version appended."""
    return request + _model_ref_suffix(variant.model_name, variant.model_version)


def table_endpoints(table: RoutingTable) -> set[str]:
    return {v.endpoint for route in table.routes.values() for v in route.variants}


class InferenceRouter:
    """The v2 service. `table` returns the current RoutingTable (None before the first
    snapshot)."""

    def __init__(self, table: Callable[[], RoutingTable | None], backends: BackendPool, stats: RouterStats,
                 mirrors: MirrorDispatcher, default_timeout_s: float | None = None) -> None:
        self._table = table
        self._backends = backends
        self._stats = stats
        self._mirrors = mirrors
        self._default_timeout_s = default_timeout_s
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_package_version()).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        def method(handler):
            return grpc.unary_unary_rpc_method_handler(_guarded(handler))

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ModelInfer": method(self.model_infer),
            "ServerLive": method(self.server_live),
            "ServerReady": method(self.server_ready),
            "ServerMetadata": method(self.server_metadata),
            "ModelReady": method(self.model_ready),
            "ModelMetadata": method(self.model_metadata),
        })

    # ---- ModelInfer -------------------------------------------------------------------

    async def model_infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        route = await self._route(request, wire.INFER_REQUEST, context)
        routing_key, forced, forward_metadata = _read_metadata(context.invocation_metadata())
        try:
            variant = route.choose(routing_key, forced)
        except UnknownVariant as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        row = self._stats.variant(route.slug, variant.name, variant.model_id)
        call = self._backends.get(variant.endpoint).infer(
            rewrite(variant, request), timeout=self._timeout(context), metadata=forward_metadata)
        # Mirrors start once the champion's call is on its way; they never hold it up.
        shadow = None
        if route.shadow_mode and variant is route.champion:
            mirrors = route.mirrors(routing_key)
            if mirrors:
                shadow = self._mirrors.start(route.slug, mirrors, request)
        answer = None
        try:
            try:
                answer = await call
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or variant is route.champion:
                    raise
                row.failovers += 1
                variant = route.champion
                row = self._stats.variant(route.slug, variant.name, variant.model_id)
                answer = await self._backends.get(variant.endpoint).infer(
                    rewrite(variant, request), timeout=self._timeout(context), metadata=forward_metadata)
        except grpc.aio.AioRpcError as err:
            row.answered(_ms_since(started), err.code().name)
            await context.send_initial_metadata(_response_metadata(route, variant))
            await context.abort(err.code(), err.details() or "", _passable(err.trailing_metadata()))
        except asyncio.CancelledError:
            # The client went away or its deadline passed; the backend call is cancelled too.
            remaining = context.time_remaining()
            row.answered(_ms_since(started),
                         "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED")
            raise
        finally:
            if shadow is not None:
                shadow.set(answer)
        row.answered(_ms_since(started))
        await context.send_initial_metadata(_response_metadata(route, variant))
        return answer

    async def _route(self, request: bytes, schema: wire.Schema, context: grpc.aio.ServicerContext) -> DeploymentRoute:
        try:
            ref = wire.scan_model_ref(request, schema)
        except wire.MalformedMessage as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {err}")
        name_field = "model_name" if schema is wire.INFER_REQUEST else "name"
        if not ref.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{name_field} is required: set it to a deployment id (dep_...)")
        table = self._table()
        if table is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the router has not loaded its routing configuration yet; retry shortly")
        route = table.lookup(ref.name)
        if route is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{name_field} {ref.name!r}: no such deployment")
        return route

    def _timeout(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return remaining if remaining is not None else self._default_timeout_s

    # ---- Server and model metadata ----------------------------------------------------

    async def server_live(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=self._table() is not None).SerializeToString()

    async def server_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._server_metadata

    async def model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Whether the deployment's champion is ready, asked of its backend."""
        route = await self._route(request, wire.MODEL_REQUEST, context)
        return await self._forward_to_champion(route, request, context, "model_ready")

    async def model_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The champion's metadata, named after the deployment (a client that checks the
        name it asked for sees its own)."""
        route = await self._route(request, wire.MODEL_REQUEST, context)
        answer = await self._forward_to_champion(route, request, context, "model_metadata")
        return answer + wire.encode_string_field(wire.NAME_FIELD, route.slug)

    async def _forward_to_champion(self, route: DeploymentRoute, request: bytes,
                                   context: grpc.aio.ServicerContext, method: str) -> bytes:
        champion = route.champion
        _, _, forward_metadata = _read_metadata(context.invocation_metadata())
        call = getattr(self._backends.get(champion.endpoint), method)
        try:
            answer = await call(rewrite(champion, request), timeout=self._timeout(context),
                                metadata=forward_metadata)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "", _passable(err.trailing_metadata()))
        await context.send_initial_metadata(_response_metadata(route, champion))
        return answer


def _guarded(handler):
    """An unexpected exception is logged and answered INTERNAL with a generic message:
    no traceback or internal detail reaches the client."""
    @functools.wraps(handler)
    async def guarded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await handler(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the router")
    return guarded


def _read_metadata(items) -> tuple[bytes | None, str | None, tuple[tuple[str, str | bytes], ...]]:
    """(routing key, forced variant, metadata to pass to the backend)."""
    routing_key = forced = None
    forward = []
    for key, value in items:
        if key == ROUTING_KEY_HEADER:
            routing_key = value.encode() if isinstance(value, str) else value
        elif key == FORCED_VARIANT_HEADER:
            forced = value if isinstance(value, str) else value.decode(errors="replace")
        elif key not in _HOP_HEADERS and not key.startswith(":"):
            forward.append((key, value))
    return routing_key, forced, tuple(forward)


def _response_metadata(route: DeploymentRoute, variant: Variant) -> tuple[tuple[str, str], ...]:
    return ((MODEL_ID_HEADER, variant.model_id), (VARIANT_HEADER, variant.name),
            (CACHE_VERSION_HEADER, str(route.cache_version)))


def _passable(trailing) -> tuple[tuple[str, str | bytes], ...]:
    """A backend's trailing metadata that can be sent on (grpc's own keys are set by grpc;
    the rich error details are the backend's and pass)."""
    return tuple((k, v) for k, v in (trailing or ())
                 if not k.startswith("grpc-") or k == "grpc-status-details-bin")


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
