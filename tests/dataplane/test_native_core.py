"""The native core (dataplane._native) imports, serves, takes a snapshot and stops."""

from __future__ import annotations

import json

import grpc
import pytest

from dataplane import _native
from tsplit.inference import grpc_predict_v2_pb2 as pb


def _config(**extra) -> str:
    return json.dumps({"host": "127.0.0.1", "port": 0, "threads": 2, "server_name": "tsplit-router",
                       "server_version": "test", **extra})


def test_native_router_answers_server_calls_and_becomes_ready_with_a_snapshot():
    router = _native.start(_config())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                       response_deserializer=pb.ServerLiveResponse.FromString)
            ready = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                        response_deserializer=pb.ServerReadyResponse.FromString)
            assert live(b"", timeout=5).live
            assert not ready(b"", timeout=5).ready
            assert not router.serving()
            assert router.swap_table(json.dumps({"revision": 1, "routes": []})) == []
            assert ready(b"", timeout=5).ready
            assert router.serving()
        assert json.loads(router.counters()) == {}
    finally:
        router.stop(1.0)


def test_a_stopped_native_router_refuses_calls_and_stop_is_idempotent():
    router = _native.start(_config())
    router.stop(0.0)
    router.stop(0.0)
    with pytest.raises(RuntimeError, match="stopped"):
        router.counters()
