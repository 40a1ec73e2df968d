"""What the router sends to backends and tells callers about them (SPEC section 5,
backends): no authorization or x-tsplit-* metadata forwarded, no backend address in an
error the router makes up, and a model server slow to come up is waited for within the
request's deadline."""

from __future__ import annotations

import time

import grpc
import pytest

from dataplane.dispatch import read_metadata
from tsplit.testing import CuttableLink


def test_authorization_and_x_tsplit_metadata_are_not_forwarded():
    routing_key, forced, forward = read_metadata([
        ("authorization", "Bearer secret"), ("x-tsplit-variant", "ch_b"), ("x-tsplit-debug", "1"),
        ("x-routing-key", "user-7"), ("x-request-id", "r-1"), ("user-agent", "grpc-python"),
    ])
    assert (routing_key, forced) == (b"user-7", "ch_b")
    assert forward == (("x-request-id", "r-1"),)


async def test_an_unreachable_backend_error_names_the_variant_and_model_not_the_address(
        backends, router, client_factory, dp):
    await backends.model("mod_gone", "127.0.0.1:1", "gone")
    await backends.deployment("dep_gone", "mod_gone")
    await dp.wait_for_version(router, "dep_gone", 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client_factory(router.address).infer(dp.infer_request("dep_gone"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    details = err.value.details()
    assert "champion" in details and "mod_gone" in details, details
    assert "127.0.0.1" not in details and ":1" not in details and "ipv4" not in details, details


async def test_a_model_server_slow_to_come_up_is_waited_for_within_the_deadline(
        backends, router, client_factory, dp):
    server = await backends.start("lin-slow")
    slow = await CuttableLink(server, connect_delay_s=1.0).start()  # each handshake waits 1 s
    try:
        await backends.model("mod_slow", slow.address, "lin-slow")
        await backends.deployment("dep_slow", "mod_slow")
        await dp.wait_for_version(router, "dep_slow", 1)
        started = time.monotonic()
        _, metadata = await client_factory(router.address).infer(dp.infer_request("dep_slow"), timeout=10)
        assert metadata["tsplit-model-id"] == "mod_slow"
        assert time.monotonic() - started >= 0.9  # it really was waited for
    finally:
        await slow.close()
