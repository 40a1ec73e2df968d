"""Where the proxyless client's background work runs (the etcd watch, the registration,
the shadow mirrors): LoopThread, an event loop in a daemon thread of its own, whatever
thread or loop its callers use; or RunningLoop, the caller's own loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        """Run coro on the loop and wait for its result (from another thread only)."""
        if self.in_thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own thread would wait forever")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """fn(*args) on the loop, soon (callbacks run in the order they were made)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float) -> None:
        """Cancel what still runs on the loop, stop it, join the thread, close the loop."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                self.run(cancel_all(), timeout)
            except TimeoutError:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class RunningLoop:
    """The same interface over the caller's own running loop (ProxylessClient.start_in_loop):
    no thread of the client's; the watch, registration and mirrors share the caller's loop,
    as grpc.aio prefers (with two loops using grpc.aio in one process, grpc hands every
    completion of one loop's calls across threads to the other)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.current_thread()

    @property
    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        if self.in_thread:
            coro.close()
            raise RuntimeError("this would block the client's event loop: await client.aclose() there")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.in_thread:
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float) -> None:
        """Nothing to stop: the loop is the caller's."""
