"""The router's Open Inference Protocol v2 service: raw bytes in, raw bytes out.

Served with a generic handler and identity (de)serializers. The per-request logic (read
the model name from the request's top-level fields, choose a variant, append its model
name and version, failover, mirrors, counters, response metadata) is
dataplane.dispatch's, shared with the proxyless client; this module is the grpc.aio
server transport around it: it hands the request and the caller's metadata and deadline
to the dispatcher and turns a DispatchError into the call's status. Tensors are never
parsed here.

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
from typing import Callable

import grpc

from tsplit import package_version
from dataplane.backends import BACKEND_CHANNEL_OPTIONS, SERVICE, Backend, BackendPool, table_endpoints
from dataplane.dispatch import (
    CACHE_VERSION_HEADER, FORCED_VARIANT_HEADER, MODEL_ID_HEADER, ROUTING_KEY_HEADER, SERVER_LIVE, SERVER_METADATA,
    SERVER_READY, VARIANT_HEADER, Dispatcher, DispatchError, forward_async, infer_async, rewrite,
)
from dataplane.mirror import MirrorDispatcher
from dataplane.routing import RoutingTable
from dataplane.stats import RouterStats

__all__ = [
    "BACKEND_CHANNEL_OPTIONS", "CACHE_VERSION_HEADER", "FORCED_VARIANT_HEADER", "MODEL_ID_HEADER",
    "ROUTING_KEY_HEADER", "SERVER_NAME", "SERVICE", "VARIANT_HEADER", "Backend", "BackendPool", "InferenceRouter",
    "rewrite", "table_endpoints",
]

log = logging.getLogger(__name__)

SERVER_NAME = "tsplit-router"
NOT_READY_MESSAGE = "the router has not loaded its routing configuration yet; retry shortly"


class InferenceRouter:
    """The v2 service. `table` returns the current RoutingTable (None before the first
    snapshot)."""

    def __init__(self, table: Callable[[], RoutingTable | None], backends: BackendPool, stats: RouterStats,
                 mirrors: MirrorDispatcher, default_timeout_s: float | None = None) -> None:
        self._backends = backends
        self._mirrors = mirrors
        self._default_timeout_s = default_timeout_s
        self._dispatcher = Dispatcher(table, stats, server_name=SERVER_NAME, server_version=package_version(),
                                      not_ready_message=NOT_READY_MESSAGE)

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """By method name. Register them with server.add_registered_method_handlers: grpc
        core then matches the path itself, with no generic-handler lookup per call."""
        method = grpc.unary_unary_rpc_method_handler
        return {
            "ModelInfer": method(self.model_infer),   # guards itself: one coroutine less per call
            "ServerLive": method(_guarded(self.server_live)),
            "ServerReady": method(_guarded(self.server_ready)),
            "ServerMetadata": method(_guarded(self.server_metadata)),
            "ModelReady": method(_guarded(self.model_ready)),
            "ModelMetadata": method(_guarded(self.model_metadata)),
        }

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, self.method_handlers())

    async def model_infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            answer, metadata = await infer_async(self._dispatcher, self._backends, self._mirrors.start, request,
                                                 context.invocation_metadata(), self._timeout(context))
        except DispatchError as err:
            await _abort(context, err)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("model_infer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the router")
        await context.send_initial_metadata(metadata)
        return answer

    def _timeout(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return remaining if remaining is not None else self._default_timeout_s

    async def server_live(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._dispatcher.local_answer(SERVER_LIVE)

    async def server_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._dispatcher.local_answer(SERVER_READY)

    async def server_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._dispatcher.local_answer(SERVER_METADATA)

    async def model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Whether the deployment's champion is ready, asked of its backend."""
        return await self._forward_to_champion(f"/{SERVICE}/ModelReady", request, context)

    async def model_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The champion's metadata, named after the deployment."""
        return await self._forward_to_champion(f"/{SERVICE}/ModelMetadata", request, context)

    async def _forward_to_champion(self, path: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            answer, metadata = await forward_async(self._dispatcher, self._backends, path, request,
                                                   context.invocation_metadata(), self._timeout(context))
        except DispatchError as err:
            await _abort(context, err)
        await context.send_initial_metadata(metadata)
        return answer


async def _abort(context: grpc.aio.ServicerContext, err: DispatchError) -> None:
    if err.initial:
        await context.send_initial_metadata(err.initial)
    await context.abort(err.code, err.details, err.trailing)


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
