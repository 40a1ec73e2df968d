"""The sync transport: a grpc.Channel whose unary calls the proxyless client routes.

A call runs in the caller's thread: serialize with the stub's serializer, dispatch
(dataplane.dispatch.call_sync: sync grpc channels to the backends, shared by every
thread), deserialize with the stub's deserializer. with_call() gives the tsplit-*
response metadata; future() runs the call on the client's loop. Streaming methods are not
routed: calling one fails with UNIMPLEMENTED.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any, Callable

import grpc

from dataplane.dispatch import DispatchError, Metadata
from dataplane.proxyless.errors import FinishedCall, ProxylessRpcError, internal, serialization, sync_error

if TYPE_CHECKING:
    from dataplane.proxyless.client import ProxylessClient

UNARY_ONLY = "the proxyless channel routes unary methods only"


class _Done(FinishedCall, grpc.Call):
    """A call that finished OK (with_call's second value)."""

    __slots__ = ("_initial",)

    def __init__(self, initial: Metadata) -> None:
        self._initial = initial

    def initial_metadata(self) -> Metadata:
        return self._initial

    def trailing_metadata(self) -> Metadata:
        return ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""



class _Future(grpc.Future, grpc.Call):
    """future()'s answer: a call running on the client's loop."""

    def __init__(self, future: concurrent.futures.Future, deserialize: Callable[[bytes], Any] | None) -> None:
        self._future = future
        self._deserialize = deserialize

    def _outcome(self, timeout=None) -> tuple[Any, Metadata]:
        try:
            answer, metadata = self._future.result(timeout)
        except DispatchError as err:
            raise sync_error(err) from None
        except concurrent.futures.CancelledError:
            raise sync_error(DispatchError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")) from None
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        if self._deserialize is None:
            return answer, metadata
        try:
            return self._deserialize(answer), metadata
        except Exception:  # noqa: BLE001
            raise sync_error(serialization("deserializing response")) from None

    def result(self, timeout=None):
        return self._outcome(timeout)[0]

    def exception(self, timeout=None):
        try:
            self._outcome(timeout)
        except ProxylessRpcError as err:
            return err
        return None

    def traceback(self, timeout=None):
        err = self.exception(timeout)
        return err.__traceback__ if err is not None else None

    def cancel(self) -> bool:
        return self._future.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def running(self) -> bool:
        return not self._future.done()

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, fn) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def _final(self) -> grpc.Call:
        err = self.exception()
        return err if err is not None else _Done(self._outcome()[1])

    def initial_metadata(self):
        return self._final().initial_metadata()

    def trailing_metadata(self):
        return self._final().trailing_metadata()

    def code(self):
        return self._final().code()

    def details(self):
        return self._final().details()

    def is_active(self) -> bool:
        return not self._future.done()

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback) -> bool:
        if self._future.done():
            return False
        self._future.add_done_callback(lambda _: callback())
        return True


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):
    __slots__ = ("_client", "_path", "_serialize", "_deserialize")

    def __init__(self, client: "ProxylessClient", path: str, serialize, deserialize) -> None:
        self._client, self._path, self._serialize, self._deserialize = client, path, serialize, deserialize

    def _request_bytes(self, request) -> bytes:
        if self._serialize is None:
            return request
        try:
            return self._serialize(request)
        except Exception:  # noqa: BLE001
            raise sync_error(serialization("serializing request")) from None

    def _invoke(self, request, timeout, metadata) -> tuple[Any, Metadata]:
        raw = self._request_bytes(request)
        try:
            answer, initial = self._client.call_sync(self._path, raw, metadata, timeout)
        except DispatchError as err:
            raise sync_error(err) from None
        except Exception:  # noqa: BLE001 - a bug of ours: INTERNAL, no internals to the caller
            raise sync_error(internal("call")) from None
        if self._deserialize is None:
            return answer, initial
        try:
            return self._deserialize(answer), initial
        except Exception:  # noqa: BLE001
            raise sync_error(serialization("deserializing response")) from None

    def __call__(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
                 compression=None):
        return self._invoke(request, timeout, metadata)[0]

    def with_call(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
                  compression=None):
        response, initial = self._invoke(request, timeout, metadata)
        return response, _Done(initial)

    def future(self, request, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
               compression=None):
        raw = self._request_bytes(request)
        try:
            future = self._client.call_future(self._path, raw, metadata, timeout)
        except DispatchError as err:
            raise sync_error(err) from None
        return _Future(future, self._deserialize)


class _Unimplemented:
    """A streaming multi-callable: constructing a stub works, calling it does not."""

    def __init__(self, path: str) -> None:
        self._path = path

    def _fail(self, *args, **kwargs):
        raise ProxylessRpcError(grpc.StatusCode.UNIMPLEMENTED, f"{self._path}: {UNARY_ONLY}")

    __call__ = with_call = future = _fail


class ProxylessChannel(grpc.Channel):
    """A grpc.Channel routed by a ProxylessClient. Closing it closes nothing shared: the
    client owns the backend channels (ProxylessClient.close())."""

    def __init__(self, client: "ProxylessClient") -> None:
        self._client = client

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _UnaryUnary(self._client, method, request_serializer, response_deserializer)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def subscribe(self, callback, try_to_connect=False) -> None:
        callback(grpc.ChannelConnectivity.READY if self._client.ready else grpc.ChannelConnectivity.CONNECTING)

    def unsubscribe(self, callback) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "ProxylessChannel":
        return self

    def __exit__(self, *exc) -> bool:
        return False
