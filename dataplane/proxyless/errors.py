"""How a proxyless call's error status reaches its caller: the exceptions grpc's own
channels raise, so `except grpc.RpcError as err: err.code()` works unchanged."""

from __future__ import annotations

import logging

import grpc

from dataplane.dispatch import DispatchError, Metadata

log = logging.getLogger("tsplit.proxyless")

INTERNAL_MESSAGE = "internal error in the proxyless client"


class FinishedCall:
    """grpc.Call's liveness methods for a call that has already ended."""

    __slots__ = ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


class ProxylessRpcError(FinishedCall, grpc.RpcError, grpc.Call, grpc.Future):
    """A finished call that ended with an error status (the sync channel raises it, as
    grpc's sync channel raises its own inactive-call error)."""

    def __init__(self, code: grpc.StatusCode, details: str, initial: Metadata = (), trailing: Metadata = ()):
        super().__init__(details)
        self._code, self._details, self._initial, self._trailing = code, details, tuple(initial), tuple(trailing)

    def __str__(self) -> str:
        return f"<ProxylessRpcError of RPC that terminated with:\n\tstatus = {self._code}\n\tdetails = \"{self._details}\">"

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Metadata:
        return self._initial

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def debug_error_string(self) -> str:
        return f"proxyless: {self._code.name}: {self._details}"

    # grpc.Future (a finished, failed one)
    def cancelled(self) -> bool:
        return self._code == grpc.StatusCode.CANCELLED

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return None

    def add_done_callback(self, fn) -> None:
        fn(self)


def sync_error(err: DispatchError) -> ProxylessRpcError:
    return ProxylessRpcError(err.code, err.details, err.initial, err.trailing)


def aio_error(err: DispatchError) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(err.code, grpc.aio.Metadata(*err.initial), grpc.aio.Metadata(*err.trailing),
                                err.details)


def internal(what: str) -> DispatchError:
    """An unexpected exception: logged here, answered INTERNAL with a generic message."""
    log.exception("proxyless %s failed", what)
    return DispatchError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def serialization(what: str) -> DispatchError:
    """The caller's own (de)serializer failed: INTERNAL, in grpc's words ("Exception
    serializing request!", "Exception deserializing response!")."""
    log.exception("proxyless call: exception %s", what)
    return DispatchError(grpc.StatusCode.INTERNAL, f"Exception {what}!")
