"""The REST gateway (SPEC section 4): HTTP/JSON in front of the gRPC control plane.

Thin by design: each route is one control-plane RPC; validation lives in the control plane.
`start_gateway(GatewaySettings(...))` runs it in-process; `tsplit-gateway` is the process.
"""
