"""The raw wire scan agrees with protobuf itself: same model name and version, and it
refuses exactly the bytes protobuf refuses (for mutated real messages and random bytes)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import wire
from tsplit.inference import grpc_predict_v2_pb2 as pb

texts = st.text(max_size=12)
parameters = st.dictionaries(
    texts,
    st.one_of(
        st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
        st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: pb.InferParameter(string_param=v), texts),
        st.builds(lambda v: pb.InferParameter(double_param=v), st.floats(allow_nan=False)),
    ),
    max_size=2,
)
contents = st.builds(
    lambda ints, floats, doubles, blobs, bools: pb.InferTensorContents(
        int64_contents=ints, fp32_contents=floats, fp64_contents=doubles, bytes_contents=blobs,
        bool_contents=bools),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    st.lists(st.floats(width=32, allow_nan=False), max_size=4),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.lists(st.binary(max_size=6), max_size=2),
    st.lists(st.booleans(), max_size=3),
)


def _input(name, datatype, shape, params, tensor_contents):
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, parameters=params, contents=tensor_contents)


inputs = st.builds(_input, texts, texts, st.lists(st.integers(0, 2**40), max_size=3), parameters, contents)
requests = st.builds(
    lambda name, version, rid, params, ins, raw: pb.ModelInferRequest(
        model_name=name, model_version=version, id=rid, parameters=params, inputs=ins,
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="out")], raw_input_contents=raw),
    texts, texts, texts, parameters, st.lists(inputs, max_size=2), st.lists(st.binary(max_size=16), max_size=2),
)


def protobuf_reads(raw: bytes) -> pb.ModelInferRequest | None:
    try:
        return pb.ModelInferRequest.FromString(raw)
    except Exception:
        return None


def scan_reads(raw: bytes) -> wire.ModelRef | None:
    try:
        return wire.scan_model_ref(raw)
    except wire.MalformedMessage:
        return None


@given(requests)
def test_scan_finds_the_model_name_and_version(request):
    ref = wire.scan_model_ref(request.SerializeToString())
    assert (ref.name, ref.version) == (request.model_name, request.model_version)


@given(requests, texts, texts)
def test_appended_fields_override_and_leave_the_rest_untouched(request, name, version):
    rewritten = protobuf_reads(request.SerializeToString() + wire.model_ref_suffix(name, version))
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    expected.model_name, expected.model_version = name, version
    assert rewritten == expected
    assert wire.scan_model_ref(request.SerializeToString() + wire.model_ref_suffix(name, version)) == wire.ModelRef(name, version)


def test_an_empty_version_overrides_the_clients_version():
    raw = pb.ModelInferRequest(model_name="dep_x", model_version="7").SerializeToString()
    parsed = pb.ModelInferRequest.FromString(raw + wire.model_ref_suffix("iris", ""))
    assert (parsed.model_name, parsed.model_version) == ("iris", "")


@st.composite
def mutated_requests(draw):
    raw = bytearray(draw(requests).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["truncate", "flip", "insert", "set"]))
        if action == "truncate" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)):]
        elif action == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        else:
            i = draw(st.integers(0, len(raw)))
            raw[i:i] = draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_requests(), st.binary(max_size=64)))
def test_scan_refuses_exactly_what_protobuf_refuses(raw):
    parsed, ref = protobuf_reads(raw), scan_reads(raw)
    assert (parsed is None) == (ref is None), (raw, parsed, ref)
    if parsed is not None:
        assert (ref.name, ref.version) == (parsed.model_name, parsed.model_version)


@pytest.mark.parametrize("raw, reason", [
    (b"\x0a\x05dep", "runs past the end"),
    (b"\x0a\x02\xff\xfe", "UTF-8"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x0b\x0a\x01x", "unterminated group"),
    (b"\x0c", "unmatched end of group"),
    (b"\x0e", "invalid wire type"),
    (b"\x00\x01", "invalid field number"),
    (b"\x2a\x05\x2a\x03\x32\x03\x00", "runs past the end"),  # inputs[0].contents.fp32 of 3 bytes
    (b"\x22\x04\x0a\x02\xc3\x28", "UTF-8"),  # a parameters key that is not UTF-8
    (b"\x0b" * 101 + b"\x0c" * 101, "too deeply"),
])
def test_malformed_messages_are_refused_with_a_reason(raw, reason):
    assert protobuf_reads(raw) is None
    with pytest.raises(wire.MalformedMessage, match=reason):
        wire.scan_model_ref(raw)


def test_packed_contents_are_checked_without_decoding_them():
    fp32 = wire.encode_varint(6 << 3 | wire.LEN) + wire.encode_varint(7) + struct.pack("<f", 1.0) + b"\x00" * 3
    tensor = wire.encode_varint(5 << 3 | wire.LEN) + wire.encode_varint(len(fp32)) + fp32
    raw = wire.encode_string_field(1, "dep_x") + wire.encode_varint(5 << 3 | wire.LEN) + wire.encode_varint(len(tensor)) + tensor
    assert protobuf_reads(raw) is None
    with pytest.raises(wire.MalformedMessage, match="4-byte"):
        wire.scan_model_ref(raw)


def test_model_request_schema_reads_name_and_version():
    raw = pb.ModelMetadataRequest(name="dep_x", version="3").SerializeToString()
    assert wire.scan_model_ref(raw, wire.MODEL_REQUEST) == wire.ModelRef("dep_x", "3")
