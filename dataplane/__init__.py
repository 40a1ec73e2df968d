"""The data plane: Open Inference Protocol v2 routers that split and mirror traffic.

`routing` is the pure core (routing table, variant choice, mirroring decision), free of
gRPC and etcd so it can run in-process in a client; `compare` scores shadow pairs;
`demo_server` is a small v2 model server for tests, the demo and benchmarks (the router
never imports it).
"""
