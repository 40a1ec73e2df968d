"""The processes' event loop: uvloop (a dependency), and the coroutine's result comes back."""

from __future__ import annotations

import asyncio

from controlplane import event_loop


def test_runs_the_coroutine_on_uvloop():
    async def main() -> tuple[str, int]:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__, 42

    module, answer = event_loop.run(main())
    assert module.startswith("uvloop") and answer == 42
