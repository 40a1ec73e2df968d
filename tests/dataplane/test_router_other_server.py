"""The router's behaviour tests (test_router.py, test_shadow.py) run again on the gRPC server
kind that is not the default (--server aio / sync): both transports must route, count,
mirror, fail over and answer errors alike. The tests are the same functions; only the
`router` and `router_factory` fixtures change, here."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

from dataplane.settings import SERVER_KINDS, RouterSettings

OTHER_SERVER = next(kind for kind in SERVER_KINDS if kind != RouterSettings().server)

# Tests that start no router of their own or start one as a subprocess with explicit flags.
_NOT_ABOUT_THE_SERVER = {
    "test_stats_rows_hold_the_record_format", "test_settings_come_from_flags_then_environment_then_defaults",
    "test_bad_settings_exit_with_a_message_naming_the_flag", "test_workers_share_a_port_and_each_registers",
    "test_health_and_readiness_follow_the_first_snapshot", "test_the_comparison_process_answers_each_pair_and_survives_garbage",
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_other_server_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


for _module in (_load("test_router"), _load("test_shadow")):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and inspect.isfunction(_test) and _name not in _NOT_ABOUT_THE_SERVER:
            globals()[_name] = _test


@pytest.fixture
async def router_factory(router_factory):
    async def start(wait_ready: bool = True, **overrides):
        return await router_factory(wait_ready, **{"server": OTHER_SERVER, **overrides})
    return start


@pytest.fixture
async def router(router_factory):
    router = await router_factory()
    assert router.settings.server == OTHER_SERVER
    return router
