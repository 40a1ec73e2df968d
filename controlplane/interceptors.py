"""The control plane's one gRPC interceptor: auth on every ControlPlane RPC, and the one
place where errors become gRPC statuses.

An ApiError becomes its code's gRPC status (tsplit.errors.ERRORS) with the message as
details and trailing metadata ("tsplit-error", code); anything else becomes INTERNAL
"internal error" and a logged traceback, never sent. Health and reflection pass untouched.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Callable

import grpc

from controlplane.auth import Principal, TokenVerifier, bearer_token
from tsplit.errors import ERROR_METADATA_KEY, ApiError

log = logging.getLogger(__name__)

DEFAULT_VERIFIED_TOKENS = 4096

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


def _expiry(token: str) -> float:
    """The exp claim of a token the verifier accepted (so it is there, and a number)."""
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


class VerifiedTokens:
    """A TokenVerifier with a memory, for the hot path: a token it accepted is answered
    from memory, by its exact text, until its exp; the least recently used are forgotten
    past max_entries. Only accepted tokens are kept: a changed byte is another token and
    goes through the full check. Verifying an RS256 token cost ~8 % of each process's CPU
    per request (PyJWT decodes base64 in Python), and a gateway sends the same token again
    and again.

    Keys are loaded once at start, so nothing a cached answer depends on can change before
    exp; tokens accepted within the leeway after exp are verified every time.
    """

    def __init__(self, verifier: TokenVerifier, max_entries: int = DEFAULT_VERIFIED_TOKENS,
                 clock: Callable[[], float] = time.time):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._verifier, self._max_entries, self._clock = verifier, max_entries, clock
        self._accepted: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._accepted)

    def verify(self, token: str) -> Principal:
        known = self._accepted.get(token)
        if known is not None:
            principal, expires = known
            if self._clock() < expires:
                self._accepted.move_to_end(token)
                return principal
            del self._accepted[token]
        principal = self._verifier.verify(token)
        expires = _expiry(token)
        if self._clock() < expires:
            self._accepted[token] = (principal, expires)
            if len(self._accepted) > self._max_entries:
                self._accepted.popitem(last=False)
        return principal


async def abort_with_api_error(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    await context.abort(err.kind.grpc_code, err.message, trailing_metadata=((ERROR_METADATA_KEY, err.code),))


class ControlPlaneInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier | VerifiedTokens):
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
