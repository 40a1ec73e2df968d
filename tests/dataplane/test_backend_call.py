"""Backend.call_infer, ModelInfer on grpc.aio's Cython call without its wrapper objects,
behaves as grpc.aio's own callable: answers, statuses (code, details, trailing metadata),
deadlines, the caller's metadata, cancellation; and a retired channel's calls in flight finish."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from dataplane.backends import BACKEND_CHANNEL_OPTIONS, INFER_METHOD, SERVICE, Backend, BackendPool


class FakeModelServer:
    """A raw-bytes ModelInfer on 127.0.0.1: b'fail' -> FAILED_PRECONDITION with trailing
    metadata, b'slow' -> waits (and records whether it was cancelled), b'late' -> answers
    after 0.3 s, b'meta' -> the
    caller's x-test metadata, anything else -> the bytes reversed."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.slow_started = asyncio.Event()
        self.slow_cancelled = asyncio.Event()
        self.address = ""

    async def infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "model not loaded",
                                (("x-why", "warming up"),))
        if request == b"slow":
            self.slow_started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.slow_cancelled.set()
                raise
        if request == b"late":
            await asyncio.sleep(0.3)
            return b"late"
        if request == b"meta":
            return dict(context.invocation_metadata()).get("x-test", "").encode()
        return request[::-1]

    async def start(self) -> "FakeModelServer":
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.infer)})])
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self


@pytest.fixture
async def model_server():
    server = await FakeModelServer().start()
    yield server
    await server.server.stop(None)


@pytest.fixture
async def backend(model_server):
    backend = Backend(model_server.address, BACKEND_CHANNEL_OPTIONS)
    yield backend
    await backend.channel.close(None)


async def test_answers_and_metadata_as_the_grpc_aio_callable_does(backend):
    wrapped = backend.channel.unary_unary(INFER_METHOD)
    for request in (b"abc", b"", bytes(range(256)) * 100):
        assert await backend.call_infer(request, 5.0) == await wrapped(request, timeout=5.0) == request[::-1]
    assert await backend.call_infer(b"meta", 5.0, (("x-test", "v1"),)) == b"v1"


async def test_an_error_status_passes_through_unchanged(backend):
    with pytest.raises(grpc.aio.AioRpcError) as lean:
        await backend.call_infer(b"fail", 5.0)
    with pytest.raises(grpc.aio.AioRpcError) as wrapped:
        await backend.channel.unary_unary(INFER_METHOD)(b"fail", timeout=5.0)
    err = lean.value
    assert (err.code(), err.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "model not loaded")
    assert dict(err.trailing_metadata())["x-why"] == "warming up"
    assert (err.code(), err.details(), dict(err.trailing_metadata())) == (
        wrapped.value.code(), wrapped.value.details(), dict(wrapped.value.trailing_metadata()))


async def test_the_deadline_is_the_timeout(backend):
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await backend.call_infer(b"slow", 0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.15 <= time.monotonic() - started < 3


async def test_an_unreachable_backend_is_unavailable():
    from tsplit.etcd_server import free_port
    backend = Backend(f"127.0.0.1:{free_port()}", BACKEND_CHANNEL_OPTIONS)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await backend.call_infer(b"abc", 2.0)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await backend.channel.close(None)


async def test_a_cancelled_caller_cancels_the_backend_call(backend, model_server):
    task = asyncio.create_task(backend.call_infer(b"slow", 10.0))
    await asyncio.wait_for(model_server.slow_started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(model_server.slow_cancelled.wait(), 5)


async def test_retiring_a_backend_waits_for_its_calls_in_flight(model_server):
    pool = BackendPool(close_grace_s=5.0)
    backend = pool.get(model_server.address)
    assert await backend.call_infer(b"warm", 5.0) == b"mraw"
    in_flight = asyncio.create_task(backend.call_infer(b"late", 5.0))
    await asyncio.sleep(0.05)   # the call is on its way
    pool.retain(set())          # no deployment uses the endpoint any more
    assert await asyncio.wait_for(in_flight, 5) == b"late"
    await pool.close()
