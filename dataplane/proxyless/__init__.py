"""Proxyless mode: route and mirror inside the caller's process (SPEC section 5, issue 7).

    from dataplane.proxyless import ProxylessClient
    client = ProxylessClient("127.0.0.1:2379")           # watches etcd like a router
    stub = GRPCInferenceServiceStub(client.channel())     # or client.aio_channel()
    response, call = stub.ModelInfer.with_call(request)   # model_name = the deployment
    call.initial_metadata()                               # tsplit-variant, ...
    client.close()

    client = await ProxylessClient.start_in_loop("127.0.0.1:2379")   # asyncio services
    stub = GRPCInferenceServiceStub(client.aio_channel())
    await client.aclose()

The per-request logic is the router's own (dataplane.dispatch); see README "Proxyless
mode" for when to use it rather than a router.
"""

from dataplane.proxyless.client import ProxylessClient
from dataplane.proxyless.errors import ProxylessRpcError
from dataplane.proxyless.settings import ProxylessSettings

__all__ = ["ProxylessClient", "ProxylessRpcError", "ProxylessSettings"]
