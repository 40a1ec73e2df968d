"""Domain errors and the one table that maps them to gRPC and HTTP.

The control plane raises ApiError; its interceptor turns it into a gRPC status whose
details are the message and whose trailing metadata ``tsplit-error`` is the code. The
gateway reads that code back and answers ``{"error": code, "message": ...}`` with the
HTTP status from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

ERROR_METADATA_KEY = "tsplit-error"


@dataclass(frozen=True)
class ErrorKind:
    grpc_code: grpc.StatusCode
    http_status: int


ERRORS: dict[str, ErrorKind] = {
    "invalid_json": ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400),
    "unauthorized": ErrorKind(grpc.StatusCode.UNAUTHENTICATED, 401),
    "forbidden": ErrorKind(grpc.StatusCode.PERMISSION_DENIED, 403),
    "deployment_not_found": ErrorKind(grpc.StatusCode.NOT_FOUND, 404),
    "model_not_found": ErrorKind(grpc.StatusCode.NOT_FOUND, 404),
    "not_found": ErrorKind(grpc.StatusCode.NOT_FOUND, 404),
    "method_not_allowed": ErrorKind(grpc.StatusCode.UNIMPLEMENTED, 405),
    "already_exists": ErrorKind(grpc.StatusCode.ALREADY_EXISTS, 409),
    "version_conflict": ErrorKind(grpc.StatusCode.FAILED_PRECONDITION, 409),
    "model_in_use": ErrorKind(grpc.StatusCode.FAILED_PRECONDITION, 409),
    "payload_too_large": ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    "unsupported_media_type": ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 415),
    "invalid_traffic_config": ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 422),
    "invalid_request": ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 422),
    "unavailable": ErrorKind(grpc.StatusCode.UNAVAILABLE, 503),
    "commit_unknown": ErrorKind(grpc.StatusCode.UNAVAILABLE, 503),
    "storage_full": ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
    "internal": ErrorKind(grpc.StatusCode.INTERNAL, 500),
}

# A gRPC status without a tsplit-error code (a transport failure, an old server) maps here.
_CODE_FOR_BARE_STATUS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "unauthorized",
    grpc.StatusCode.PERMISSION_DENIED: "forbidden",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "unavailable",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_request",
}


class ApiError(Exception):
    """An error the API answers with: a code from ERRORS and a message for people."""

    def __init__(self, code: str, message: str):
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def kind(self) -> ErrorKind:
        return ERRORS[self.code]

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r})"


def _carried_code(err: grpc.RpcError) -> str | None:
    for key, value in err.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY and value in ERRORS:
            return value
    return None


def api_error_from_rpc_error(err: grpc.RpcError, *, change: bool = False) -> ApiError:
    """The ApiError a failed control-plane RPC stands for.

    A status the control plane raised carries its code; any other (the control plane not
    reached, a transport failure) gets a generic message: grpc's own text is not for users.
    A change whose call ran out of time (a bare DEADLINE_EXCEEDED) may have been applied:
    that is commit_unknown, never unavailable (which says nothing was written).
    """
    code = _carried_code(err)
    if code is not None:
        return ApiError(code, err.details() or code)
    if change and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError("commit_unknown", "the control plane did not answer in time, so whether the change was "
                                          "applied is unknown; retry with the same request_id to learn it")
    code = _CODE_FOR_BARE_STATUS.get(err.code(), "internal")
    if code == "unavailable":
        return ApiError(code, "the control plane is unreachable or did not answer in time")
    if code == "internal":
        return ApiError(code, "internal error")
    return ApiError(code, err.details() or code)
