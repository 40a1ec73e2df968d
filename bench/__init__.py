"""The benchmark harness behind scripts/bench (issue 5): load rows against direct backends,
nginx and the tsplit router, propagation, control-plane writes, scale and split precision."""
