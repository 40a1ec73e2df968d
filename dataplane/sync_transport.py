"""The router's v2 service on a sync grpc server (`--server sync`): a thread pool serves the
calls, each sent to its backend over a sync channel from the serving thread.

grpc.aio's per-call machinery (tasks, futures and Cython callbacks on one event loop) was
60-70 % of the router's time under load (BENCHMARKS.md); a sync server hands each call to
a thread that blocks in C on its backend call, with the GIL released meanwhile. The
per-request logic is the same Dispatcher (dataplane.dispatch.call_sync, as the proxyless
sync channel uses it). What is not per-request stays on the router's event loop: config
sync, registration, metrics and the shadow mirrors, which the serving threads hand their
copies to with call_soon_threadsafe. Counts are deferred (Dispatcher(deferred=...)) and
applied on the loop, since serving threads run at once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health

from dataplane.backends import SERVICE, SyncBackendPool
from dataplane.dispatch import Dispatcher, DispatchError, StartMirrors, call_sync
from dataplane.mirror import MirrorDispatcher, ShadowFromThread
from dataplane.routing import Variant

log = logging.getLogger(__name__)

# Past this a deadline is none at all (a sync server reports a call without one as
# time_remaining() of about 9.2e18 s, which a backend call would take as already expired).
_NO_DEADLINE_S = 10 * 365 * 86400.0

METHODS = ("ModelInfer", "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata")


def mirrors_on_loop(loop: asyncio.AbstractEventLoop, mirrors: MirrorDispatcher) -> StartMirrors:
    def start(slug: str, variants: Sequence[Variant], request: bytes) -> ShadowFromThread:
        return ShadowFromThread(loop.call_soon_threadsafe, mirrors, slug, variants, request)
    return start


class SyncInferenceRouter:
    """The v2 service's methods as sync handlers over call_sync."""

    def __init__(self, dispatcher: Dispatcher, backends: SyncBackendPool, start_mirrors: StartMirrors,
                 default_timeout_s: float | None) -> None:
        self._dispatcher, self._backends, self._start_mirrors = dispatcher, backends, start_mirrors
        self._default_timeout_s = default_timeout_s

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._method(f"/{SERVICE}/{name}")) for name in METHODS})

    def _method(self, path: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        dispatcher, backends, start_mirrors = self._dispatcher, self._backends, self._start_mirrors
        default_timeout = self._default_timeout_s

        def serve(request: bytes, context: grpc.ServicerContext) -> bytes:
            remaining = context.time_remaining()
            if remaining is None or remaining > _NO_DEADLINE_S:   # no client deadline: sync grpc says ~inf
                remaining = default_timeout
            try:
                answer, metadata = call_sync(dispatcher, backends, start_mirrors, path, request,
                                             context.invocation_metadata(), remaining)
            except DispatchError as err:
                if err.initial:
                    context.send_initial_metadata(err.initial)
                if err.trailing:
                    context.set_trailing_metadata(err.trailing)
                context.abort(err.code, err.details)
            except Exception:
                log.exception("%s failed", path.rsplit("/", 1)[-1])
                context.abort(grpc.StatusCode.INTERNAL, "internal error in the router")
            if metadata:
                context.send_initial_metadata(metadata)
            return answer

        serve.__name__ = path.rsplit("/", 1)[-1]
        return serve


class SyncServer:
    """A sync grpc.server behind the awaitable start/stop the router's lifecycle uses."""

    def __init__(self, threads: int, options: list[tuple[str, object]]) -> None:
        self.grpc = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="tsplit-router"), options=options)
        self.health = health.HealthServicer()

    def add_insecure_port(self, address: str) -> int:
        return self.grpc.add_insecure_port(address)

    async def start(self) -> None:
        self.grpc.start()

    async def set_health(self, name: str, status) -> None:
        self.health.set(name, status)

    async def enter_graceful_shutdown(self) -> None:
        self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        stopped = self.grpc.stop(grace_s)
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)

