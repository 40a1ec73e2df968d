"""What the router tells callers about backends (SPEC section 5, backends): no backend
address in an error the router makes up, and a model server slow to come up is waited for
within the request's deadline. (The metadata it forwards: test_proxyless_units.)"""

from __future__ import annotations

import time

import grpc
import pytest

from tsplit.testing import CuttableLink


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
