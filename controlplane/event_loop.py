"""The event loop the control-plane and gateway processes run on: uvloop when it is
installed (a dependency; it cut each process's CPU per write by about 15 % in the write
benchmark, grpc.aio included), else asyncio's own. Tests run in-process on asyncio's."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
