"""Bad bytes to a router's ModelInfer: random bytes, mutated and truncated requests, and
messages over the size limit. The router answers exactly what protobuf's own parser says
(INVALID_ARGUMENT for what does not parse or names no model, NOT_FOUND for an unknown
deployment); what it routes gets the backend's own answer; nothing is UNKNOWN or INTERNAL,
and the router keeps serving throughout."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.demo_server import DemoModel, start_demo_server
from tsplit.etcd import Etcd
from tsplit.inference import grpc_predict_v2_pb2 as pb
from tsplit.layout import Layout
from tsplit.resources import Deployment, Model, dumps

SLUG, MODEL_ID, BACKEND_MODEL = "dep_fuzz", "mod_fuzz0001", "lin-fuzz"
MAX_MESSAGE_MB = 1
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Target:
    def __init__(self, router_address: str, backend_address: str):
        self.router = grpc.insecure_channel(router_address)
        self.backend = grpc.insecure_channel(backend_address)
        self.router_infer = self.router.unary_unary(INFER)
        self.backend_infer = self.backend.unary_unary(INFER)

    @staticmethod
    def code_of(call, raw: bytes) -> grpc.StatusCode:
        try:
            call(raw, timeout=10)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    def router_code(self, raw: bytes) -> grpc.StatusCode:
        return self.code_of(self.router_infer, raw)

    def close(self) -> None:
        self.router.close()
        self.backend.close()


@pytest.fixture(scope="module")
def target(etcd_member, dev_auth, rel):
    """A router (1 MiB message limit) and its demo backend on a loop of their own, routing
    SLUG; the synchronous fuzzers call them from the test thread."""
    thread = rel.LoopThread()
    layout = Layout(f"/t-fuzz-{uuid.uuid4().hex[:8]}")
    system = rel.System([etcd_member.endpoint], layout, dev_auth)

    async def start():
        backend = await start_demo_server([DemoModel(BACKEND_MODEL, weights=((1.0, 0.0), (0.0, 1.0)), bias=(0.0, 0.0))])
        system._track(backend, backend.stop)
        async with Etcd(etcd_member.endpoint) as etcd:
            await etcd.put(layout.model(MODEL_ID), dumps(Model(MODEL_ID, backend.address, BACKEND_MODEL).to_json()))
            await etcd.put(layout.deployment(SLUG), dumps(Deployment(SLUG, "org_1", MODEL_ID).to_json()))
        router = await system.router(max_message_mb=MAX_MESSAGE_MB)
        return router, backend

    try:
        router, backend = thread.run(start())
        made = Target(router.address, backend.address)
        yield made
        made.close()
    finally:
        thread.run(system.close())
        thread.close()


def valid_request() -> bytes:
    return rel_request(SLUG).SerializeToString()


def rel_request(name: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, id="fuzz")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0.3, 0.7])
    request.outputs.add(name="label")
    return request


def expected_code(target: Target, raw: bytes) -> grpc.StatusCode:
    """What the router must answer: protobuf's verdict, or for a routed request the code the
    backend gives the same bytes with the model name rewritten."""
    try:
        parsed = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        return grpc.StatusCode.INVALID_ARGUMENT
    if not parsed.model_name:
        return grpc.StatusCode.INVALID_ARGUMENT
    if parsed.model_name != SLUG:
        return grpc.StatusCode.NOT_FOUND
    rewritten = raw + pb.ModelInferRequest(model_name=BACKEND_MODEL).SerializeToString() + b"\x12\x00"
    return Target.code_of(target.backend_infer, rewritten)


def assert_still_serving(target: Target) -> None:
    assert target.router_code(valid_request()) == grpc.StatusCode.OK


@st.composite
def mutated_requests(draw) -> bytes:
    """A valid request with bytes flipped, inserted or deleted."""
    data = bytearray(valid_request())
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif position < len(data):
            del data[position]
    return bytes(data)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.binary(max_size=512), mutated_requests()))
def test_random_and_mutated_bytes_get_protobufs_verdict(target, raw):
    code = target.router_code(raw)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), raw
    assert code == expected_code(target, raw), f"router answered {code.name} to {raw!r}"


def test_every_truncation_of_a_request_gets_protobufs_verdict(target):
    raw = valid_request()
    codes = {}
    for cut in range(len(raw) + 1):
        code = target.router_code(raw[:cut])
        assert code == expected_code(target, raw[:cut]), f"router answered {code.name} to the first {cut} bytes"
        codes[code.name] = codes.get(code.name, 0) + 1
    assert codes.get("OK", 0) >= 1 and codes["INVALID_ARGUMENT"] >= len(raw) // 2, codes
    assert_still_serving(target)


def test_messages_over_the_limit_are_refused_and_the_router_stays_up(target):
    near = rel_request(SLUG)
    near.id = "x" * (MAX_MESSAGE_MB * 1024 * 1024 - 4096)
    assert target.router_code(near.SerializeToString()) == grpc.StatusCode.OK
    for size_mb in (MAX_MESSAGE_MB + 1, 8):
        over = rel_request(SLUG)
        over.raw_input_contents.append(b"\0" * (size_mb * 1024 * 1024))
        try:
            target.router_infer(over.SerializeToString(), timeout=10)
            raise AssertionError(f"a {size_mb} MiB request was accepted")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert_still_serving(target)
