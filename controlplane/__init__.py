"""The tsplit control plane: validation core (actions), auth, the etcd store, the gRPC service.

`actions` and `auth` are pure (no I/O after start-up) and hold every rule the API enforces;
the store and the transports around them stay thin.
"""
