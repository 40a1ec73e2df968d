"""The control plane's one gRPC interceptor: auth on every ControlPlane RPC, and the one
place where errors become gRPC statuses.

An ApiError becomes its code's gRPC status (tsplit.errors.ERRORS) with the message as
details and trailing metadata ("tsplit-error", code); anything else becomes INTERNAL
"internal error" and a logged traceback, never sent. Health and reflection pass untouched.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

import grpc

from controlplane.auth import Principal, TokenVerifier, bearer_token
from tsplit.errors import ERROR_METADATA_KEY, ApiError

log = logging.getLogger(__name__)

CONTROL_PLANE_METHODS = "/tsplit.v1.ControlPlane/"

_principal: ContextVar[Principal] = ContextVar("tsplit_principal")


def current_principal() -> Principal:
    """The caller of the RPC being served, verified by the interceptor."""
    return _principal.get()


def _metadata_value(metadata, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


async def abort_with_api_error(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    await context.abort(err.kind.grpc_code, err.message, trailing_metadata=((ERROR_METADATA_KEY, err.code),))


class ControlPlaneInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier):
        self.verifier = verifier

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(CONTROL_PLANE_METHODS) or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        authorization = _metadata_value(handler_call_details.invocation_metadata, "authorization")

        async def guarded(request, context):
            try:
                principal = self.verifier.verify(bearer_token(authorization))
                token = _principal.set(principal)
                try:
                    return await behavior(request, context)
                finally:
                    _principal.reset(token)
            except ApiError as err:
                if err.kind.grpc_code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                    log.warning("%s: %s: %s", method, err.code, err.message)
                await abort_with_api_error(context, err)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("%s failed", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal error", trailing_metadata=((ERROR_METADATA_KEY, "internal"),))

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
