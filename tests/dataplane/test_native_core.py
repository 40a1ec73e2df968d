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


def test_reflection_resolves_every_listed_service():
    """What grpcurl does: list the services, then fetch each one's file by symbol."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from dataplane import native_router
    services = ["inference.GRPCInferenceService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"]
    router = _native.start(_config(reflection=native_router.reflection_spec(services)))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            def ask(**request):
                return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]),
                                                           timeout=5)))
            listed = [s.name for s in ask(list_services="").list_services_response.service]
            assert listed == services
            for service in listed:
                answer = ask(file_containing_symbol=service)
                assert answer.WhichOneof("message_response") == "file_descriptor_response", service
                first = descriptor_pb2.FileDescriptorProto.FromString(
                    answer.file_descriptor_response.file_descriptor_proto[0])
                assert service.rsplit(".", 1)[1] in [s.name for s in first.service]
            method = ask(file_containing_symbol="inference.GRPCInferenceService.ModelInfer")
            assert method.WhichOneof("message_response") == "file_descriptor_response"
            missing = ask(file_containing_symbol="no.such.Service")
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    finally:
        router.stop(0.0)
