"""Channels to model servers, one per endpoint, created on first use and reused.

BackendPool holds grpc.aio channels (the router, the proxyless aio channel, mirrors);
SyncBackendPool holds sync grpc channels (the proxyless sync channel, which calls backends
from the caller's own thread). Both send raw bytes: no (de)serializer, the request is
forwarded as the dispatcher rewrote it and the answer comes back as the backend sent it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Sequence

import grpc
from grpc.aio._call import _create_rpc_error

from dataplane.routing import RoutingTable

SERVICE = "inference.GRPCInferenceService"
INFER_METHOD = f"/{SERVICE}/ModelInfer"
_INFER_METHOD_BYTES = INFER_METHOD.encode()
_CANCELLED_DETAILS = "the caller went away"

BACKEND_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    # Tensors can be large; the client already chose what it sends.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A restarted model server is used again within a second or two, not after grpc's
    # default backoff of up to two minutes. No min_reconnect_backoff_ms: grpc also takes it
    # as the least time a connection attempt gets, and a model server whose first
    # handshake takes longer (0.8 s seen from a real v2 server) must be waited for within
    # the request's deadline (its default: 20 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def table_endpoints(table: RoutingTable) -> set[str]:
    return {v.endpoint for route in table.routes.values() for v in route.variants}


class Backend:
    """One reused grpc.aio channel to a v2 server; raw-bytes callables by method path.

    call_infer is ModelInfer on grpc.aio's Cython call directly: grpc.aio's own callable
    wraps every call in a UnaryUnaryCall object and an asyncio Task, which was 5-15 % of
    the router's CPU per request (BENCHMARKS.md, "Tries"). It behaves as the wrapped call
    does: AioRpcError on a non-OK status, CancelledError cancels the backend call.
    These are grpcio's private parts (Channel._channel, _create_rpc_error), which is one
    reason grpcio is pinned to one release in pyproject.toml; tests/dataplane/
    test_backend_call.py pins down the behaviour to re-check on an upgrade."""

    def __init__(self, endpoint: str, options: Sequence[tuple[str, object]]) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(endpoint, options=list(options))
        # A registered method: grpc core skips interning the path on every call.
        self.infer = self.channel.unary_unary(INFER_METHOD, _registered_method=True)
        self._methods = {INFER_METHOD: self.infer}
        self._cython_channel = self.channel._channel
        self._infer_handle = getattr(self.infer, "_registered_call_handle", 0)

    async def call_infer(self, request: bytes, timeout: float | None, metadata: tuple = ()) -> bytes:
        call = self._cython_channel.call(_INFER_METHOD_BYTES, None if timeout is None else time.time() + timeout,
                                         None, None, self._infer_handle)
        try:
            answer = await call.unary_unary(request, metadata, None)
        except asyncio.CancelledError:
            if not call.done():
                call.cancel(_CANCELLED_DETAILS)
            raise
        if call.is_ok():
            return answer
        if call.is_locally_cancelled():
            raise asyncio.CancelledError()
        raise _create_rpc_error(call._initial_metadata, call._status)

    def method(self, path: str):
        callable_ = self._methods.get(path)
        if callable_ is None:
            callable_ = self._methods[path] = self.channel.unary_unary(path)
        return callable_

    @property
    def model_ready(self):
        return self.method(f"/{SERVICE}/ModelReady")

    @property
    def model_metadata(self):
        return self.method(f"/{SERVICE}/ModelMetadata")


class BackendPool:
    """grpc.aio channels to backends by endpoint, used from one event loop."""

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
        return await self.get(endpoint).call_infer(request, timeout)

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(self._backends)

    def retain(self, endpoints: set[str] | frozenset[str]) -> None:
        """Close, after a grace period for calls in flight, the channels to endpoints no
        longer in use."""
        for endpoint in [e for e in self._backends if e not in endpoints]:
            backend = self._backends.pop(endpoint)
            # Calls of call_infer in flight finish: a closed channel does not cancel them.
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


class SyncBackend:
    """One reused sync grpc channel to a v2 server; raw-bytes callables by method path.
    Safe to call from many threads at once (grpc's sync channels are)."""

    def __init__(self, endpoint: str, options: Sequence[tuple[str, object]]) -> None:
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(endpoint, options=list(options))
        self.infer = self.channel.unary_unary(INFER_METHOD)
        self._methods = {INFER_METHOD: self.infer}
        self._lock = threading.Lock()

    def method(self, path: str):
        callable_ = self._methods.get(path)
        if callable_ is None:
            with self._lock:
                callable_ = self._methods.get(path) or self.channel.unary_unary(path)
                self._methods[path] = callable_
        return callable_


class SyncBackendPool:
    """Sync grpc channels to backends by endpoint, shared by the caller's threads."""

    def __init__(self, options: Sequence[tuple[str, object]] = BACKEND_CHANNEL_OPTIONS,
                 close_grace_s: float = 30.0) -> None:
        self._options = tuple(options)
        self._backends: dict[str, SyncBackend] = {}
        self._close_grace_s = close_grace_s
        self._retiring: list[tuple[float, SyncBackend]] = []   # (close after, backend)
        self._lock = threading.Lock()
        self.closed = False

    def get(self, endpoint: str) -> SyncBackend:
        backend = self._backends.get(endpoint)   # a dict read is atomic: no lock on the hot path
        if backend is None:
            with self._lock:
                if self.closed:
                    raise RuntimeError("the proxyless channel is closed")
                backend = self._backends.get(endpoint)
                if backend is None:
                    backend = self._backends[endpoint] = SyncBackend(endpoint, self._options)
        return backend

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(self._backends)

    def retain(self, endpoints: set[str] | frozenset[str]) -> None:
        """Retire the channels to endpoints no longer in use; each is closed once its
        grace period for calls in flight has passed (checked on every retain())."""
        now = time.monotonic()
        with self._lock:
            for endpoint in [e for e in self._backends if e not in endpoints]:
                self._retiring.append((now + self._close_grace_s, self._backends.pop(endpoint)))
            due = [b for when, b in self._retiring if when <= now]
            self._retiring = [(when, b) for when, b in self._retiring if when > now]
        for backend in due:
            backend.channel.close()

    def close(self) -> None:
        """Close every channel now (calls in flight are cancelled)."""
        with self._lock:
            self.closed = True
            backends = list(self._backends.values()) + [b for _, b in self._retiring]
            self._backends, self._retiring = {}, []
        for backend in backends:
            backend.channel.close()
