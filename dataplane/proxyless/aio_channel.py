"""The grpc.aio transport: a grpc.aio.Channel whose unary calls the proxyless client routes.

A call is a task on the caller's event loop: serialize with the stub's serializer,
dispatch (dataplane.dispatch.call_async over grpc.aio channels of this channel's own, bound
to the loop of its first call), deserialize with the stub's deserializer. The call object
answers `await call`, `await call.initial_metadata()` (the tsplit-* metadata), code(),
details() and cancel() like grpc.aio's. Streaming methods are not routed: calling one fails
with UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import grpc

from dataplane.backends import BackendPool
from dataplane.dispatch import DispatchError
from dataplane.proxyless.errors import aio_error, internal, serialization
from dataplane.proxyless.sync_channel import UNARY_ONLY

if TYPE_CHECKING:
    from dataplane.proxyless.client import ProxylessClient

_EMPTY = grpc.aio.Metadata()


def _consume(task: asyncio.Task) -> None:
    # A call nobody awaited must not log "exception was never retrieved": grpc.aio's don't.
    if not task.cancelled():
        task.exception()


class _Call(grpc.aio.UnaryUnaryCall):
    __slots__ = ("_task", "_deadline")

    def __init__(self, task: asyncio.Task, timeout: float | None) -> None:
        self._task = task
        self._deadline = None if timeout is None else time.monotonic() + timeout
        task.add_done_callback(_consume)

    def __await__(self):
        response, _ = yield from self._task.__await__()
        return response

    async def _finished(self) -> None:
        if not self._task.done():
            await asyncio.wait((self._task,))

    def _error(self) -> BaseException | None:
        return None if self._task.cancelled() else self._task.exception()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._finished()
        if self._task.cancelled():
            return _EMPTY
        err = self._error()
        if isinstance(err, grpc.aio.AioRpcError):
            return err.initial_metadata()
        return grpc.aio.Metadata(*self._task.result()[1]) if err is None else _EMPTY

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._finished()
        err = self._error()
        return err.trailing_metadata() if isinstance(err, grpc.aio.AioRpcError) else _EMPTY

    async def code(self) -> grpc.StatusCode:
        await self._finished()
        if self._task.cancelled():
            return grpc.StatusCode.CANCELLED
        err = self._error()
        return err.code() if isinstance(err, grpc.aio.AioRpcError) else grpc.StatusCode.OK

    async def details(self) -> str:
        await self._finished()
        if self._task.cancelled():
            return "Locally cancelled by application!"
        err = self._error()
        return (err.details() or "") if isinstance(err, grpc.aio.AioRpcError) else ""

    async def wait_for_connection(self) -> None:
        return None

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback) -> None:
        self._task.add_done_callback(lambda _: callback(self))


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable):
    def __init__(self, channel: "ProxylessAioChannel", path: str, serialize, deserialize) -> None:
        self._channel, self._path, self._serialize, self._deserialize = channel, path, serialize, deserialize

    def __call__(self, request, *, timeout=None, metadata=None, credentials=None, wait_for_ready=None,
                 compression=None) -> _Call:
        pool = self._channel._bind()
        loop = asyncio.get_running_loop()
        return _Call(loop.create_task(self._run(pool, request, metadata, timeout)), timeout)

    async def _run(self, pool: BackendPool, request, metadata, timeout) -> tuple[Any, tuple]:
        try:
            if self._serialize is None:
                raw = request
            else:
                try:
                    raw = self._serialize(request)
                except Exception:  # noqa: BLE001
                    raise serialization("serializing request") from None
            answer, initial = await self._channel._client.call_async(pool, self._path, raw, metadata, timeout)
            if self._deserialize is None:
                return answer, initial
            try:
                return self._deserialize(answer), initial
            except Exception:  # noqa: BLE001
                raise serialization("deserializing response") from None
        except DispatchError as err:
            raise aio_error(err) from None
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            raise
        except Exception:  # noqa: BLE001 - a bug of ours: INTERNAL, no internals to the caller
            raise aio_error(internal("call")) from None


class _Unimplemented:
    """A streaming multi-callable: constructing a stub works, calling it does not."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __call__(self, *args, **kwargs):
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNIMPLEMENTED, _EMPTY, _EMPTY, f"{self._path}: {UNARY_ONLY}")


class ProxylessAioChannel(grpc.aio.Channel):
    """A grpc.aio.Channel routed by a ProxylessClient; its backend channels are its own,
    on the event loop of its first call. close() closes them."""

    def __init__(self, client: "ProxylessClient") -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: BackendPool | None = None
        self._closed = False

    def _bind(self) -> BackendPool:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._pool is not None:
            return self._pool
        if self._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        if self._pool is not None:
            raise grpc.aio.UsageError("a proxyless aio channel serves the event loop of its first call; "
                                      "make one aio_channel() per event loop")
        self._loop, self._pool = loop, BackendPool()
        return self._pool

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _Unimplemented(method)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return grpc.ChannelConnectivity.READY if self._client.ready else grpc.ChannelConnectivity.CONNECTING

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state and not self._closed:
            if last_observed_state == grpc.ChannelConnectivity.CONNECTING:
                await self._client.wait_ready_async(1.0)
            else:
                await asyncio.sleep(1.0)

    async def channel_ready(self) -> None:
        """Wait until the client has its first config."""
        while not await self._client.wait_ready_async(1.0):
            pass

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        self._client._forget(self)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> "ProxylessAioChannel":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- called by the client, from its own thread ------------------------------------

    def _retain_threadsafe(self, endpoints: set[str]) -> None:
        loop, pool = self._loop, self._pool
        if loop is None or pool is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(pool.retain, endpoints)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _close_from_client(self, timeout: float) -> None:
        """Close from ProxylessClient.close(), whichever thread that runs on."""
        loop, self._closed = self._loop, True
        if loop is None or self._pool is None or loop.is_closed():
            self._pool = None
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self.close())      # cannot wait here without blocking the loop
        elif loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout)
            except Exception:  # noqa: BLE001 - best effort; the channels die with the loop
                pass
        else:
            self._pool = None
