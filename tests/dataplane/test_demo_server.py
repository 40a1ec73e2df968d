"""The demo v2 model server, through real gRPC calls with the generated stub."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataplane.compare import compare_responses
from dataplane.demo_server import (
    DemoModel, parse_args, parse_weights, start_demo_server, start_demo_server_in_thread)
from dataplane.tensors import output_tensors
from tsplit.inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

IRIS = DemoModel("iris", weights=((0.5, -0.2, 0.1), (0.3, 0.8, -0.4), (-1.0, 0.2, 0.9), (0.0, 0.1, 0.2)),
                 bias=(0.1, 0.0, -0.1), version="3")
SLOW = DemoModel("slow", weights=((1.0, 0.0), (0.0, 1.0)), bias=(0.0, 0.0), latency_ms=150)
FLAKY = DemoModel("flaky", weights=((1.0, 0.0), (0.0, 1.0)), bias=(0.0, 0.0), error_rate=0.25,
                  error_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def expected(model: DemoModel, rows):
    """softmax(x @ W + b) and argmax, computed independently of the server."""
    probs, labels = [], []
    for x in rows:
        logits = [model.bias[c] + sum(x[i] * model.weights[i][c] for i in range(len(x)))
                  for c in range(len(model.bias))]
        z = sum(math.exp(v) for v in logits)
        probs.append([math.exp(v) / z for v in logits])
        labels.append(max(range(len(logits)), key=logits.__getitem__))
    return probs, labels


def infer_request(model: str, rows, raw: bool, version: str = "", **kw) -> pb.ModelInferRequest:
    flat = [v for r in rows for v in r]
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[len(rows), len(rows[0])])
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req-7", **kw)
    if raw:
        request.raw_input_contents.append(struct.pack(f"<{len(flat)}f", *flat))
    else:
        tensor.contents.fp32_contents.extend(flat)
    request.inputs.append(tensor)
    return request


@pytest.fixture
async def stub():
    running = await start_demo_server([IRIS, SLOW, FLAKY])
    channel = grpc.aio.insecure_channel(running.address)
    try:
        yield pb_grpc.GRPCInferenceServiceStub(channel), channel
    finally:
        await channel.close()
        await running.stop(None)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_linear_classifier_answers_softmax_and_argmax(stub, raw):
    s, _ = stub
    response = await s.ModelInfer(infer_request("iris", ROWS, raw), timeout=5)
    assert (response.model_name, response.model_version, response.id) == ("iris", "3", "req-7")
    assert bool(response.raw_output_contents) is raw
    out = output_tensors(response)
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    assert out["probabilities"].datatype == "FP32" and out["probabilities"].shape == (3, 3)
    assert out["label"].datatype == "INT64" and out["label"].shape == (3, 1)
    # inputs travel as float32, so compare with the float32 view of the rows
    rows32 = [list(struct.unpack("<4f", struct.pack("<4f", *r))) for r in ROWS]
    probs, labels = expected(IRIS, rows32)
    assert list(out["label"].values) == labels
    assert len(set(labels)) > 1  # the sample rows exercise more than one class
    for got, want in zip([out["probabilities"].values[i:i + 3] for i in range(0, 9, 3)], probs):
        assert got == pytest.approx(want, rel=1e-6)


async def test_raw_and_typed_answers_hold_the_same_bits(stub):
    s, _ = stub
    raw = await s.ModelInfer(infer_request("iris", ROWS, True), timeout=5)
    typed = await s.ModelInfer(infer_request("iris", ROWS, False), timeout=5)
    c = compare_responses(raw, typed)
    assert c.exact_match and c.label_agreement == 1.0 and c.abs_diff_sum == 0.0


async def test_requested_outputs_only(stub):
    s, _ = stub
    request = infer_request("iris", ROWS[:1], True,
                            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="label")])
    response = await s.ModelInfer(request, timeout=5)
    assert [o.name for o in response.outputs] == ["label"] and len(response.raw_output_contents) == 1


async def test_server_and_model_metadata(stub):
    s, channel = stub
    assert (await s.ServerLive(pb.ServerLiveRequest(), timeout=5)).live
    assert (await s.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    meta = await s.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert meta.name == "tsplit-demo-model" and meta.version
    assert (await s.ModelReady(pb.ModelReadyRequest(name="iris", version="3"), timeout=5)).ready
    model = await s.ModelMetadata(pb.ModelMetadataRequest(name="iris"), timeout=5)
    assert list(model.versions) == ["3"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("probabilities", "FP32", [-1, 3]), ("label", "INT64", [-1, 1])]
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("call", ["ModelInfer", "ModelReady", "ModelMetadata"])
async def test_unknown_model_or_version_is_not_found(stub, call):
    s, _ = stub
    requests = {
        "ModelInfer": lambda name, v: infer_request(name, ROWS, True, version=v),
        "ModelReady": lambda name, v: pb.ModelReadyRequest(name=name, version=v),
        "ModelMetadata": lambda name, v: pb.ModelMetadataRequest(name=name, version=v),
    }
    for name, version, fragment in [("nope", "", "'nope' is not served"), ("iris", "9", "no version '9'")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(s, call)(requests[call](name, version), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and fragment in err.value.details()


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.inputs[0].shape.__setitem__(1, 3), "shape [3, 3] must be [batch, 4]"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 5), "raw contents hold 5 bytes"),
    (lambda r: setattr(r.inputs[0], "datatype", "BYTES"), "is not numeric"),
    (lambda r: r.outputs.add(name="logits"), "no output 'logits'"),
    (lambda r: r.inputs.add(name="second"), "exactly one input"),
])
async def test_bad_requests_are_invalid_argument_naming_the_field(stub, mutate, fragment):
    s, _ = stub
    request = infer_request("iris", ROWS, True)
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ModelInfer(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()


async def test_latency_is_added_and_deadlines_apply(stub):
    s, _ = stub
    started = time.monotonic()
    await s.ModelInfer(infer_request("slow", [[1.0, 2.0]], True), timeout=5)
    assert 0.15 <= time.monotonic() - started < 2.0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ModelInfer(infer_request("slow", [[1.0, 2.0]], True), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_error_rate_fails_exactly_that_share_with_the_chosen_code(stub):
    s, _ = stub
    outcomes = []
    for _ in range(40):
        try:
            await s.ModelInfer(infer_request("flaky", [[1.0, 2.0]], False), timeout=5)
            outcomes.append("ok")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "injected error" in err.details()
            outcomes.append("error")
    assert outcomes.count("error") == 40 * FLAKY.error_rate
    assert outcomes[:4] == ["ok", "ok", "ok", "error"]  # evenly spread, not in a burst


def test_threaded_server_serves_synchronous_callers():
    server = start_demo_server_in_thread([IRIS])
    try:
        with grpc.insecure_channel(server.address) as channel:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request("iris", ROWS, True),
                                                                             timeout=5)
        assert [o.name for o in response.outputs] == ["probabilities", "label"]
    finally:
        server.stop()
    assert not server._thread.is_alive()


def test_model_settings_are_validated():
    with pytest.raises(ValueError, match="one value per class"):
        DemoModel("m", weights=((1.0, 2.0),), bias=(0.0,))
    with pytest.raises(ValueError, match="error_rate"):
        DemoModel("m", weights=((1.0,),), bias=(0.0,), error_rate=1.5)
    assert parse_weights("1,0,0,1", 2) == parse_weights("1,0;0,1", None) == ((1.0, 0.0), (0.0, 1.0))


def test_flags_and_environment(monkeypatch):
    listen, model, _ = parse_args(["--model-name", "linear-b", "--weights", "1,0.1,0,1", "--bias", "0,0.05",
                                "--error-code", "unavailable", "--error-rate", "0.5"])
    assert listen == "127.0.0.1:0"
    assert model.weights == ((1.0, 0.1), (0.0, 1.0)) and model.bias == (0.0, 0.05)
    assert model.error_code == grpc.StatusCode.UNAVAILABLE and model.error_rate == 0.5
    monkeypatch.setenv("TSPLIT_DEMO_MODEL_LATENCY_MS", "25")
    monkeypatch.setenv("TSPLIT_DEMO_MODEL_LISTEN", "127.0.0.1:0")
    assert parse_args([])[1].latency_ms == 25.0
    with pytest.raises(SystemExit):
        parse_args(["--weights", "1,2,3", "--bias", "0,0"])


def test_command_serves_until_sigterm():
    """`tsplit-demo-model` as a process: prints its address, answers, stops on SIGTERM."""
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "dataplane.demo_server", "--listen", "127.0.0.1:0", "--model-name", "linear-a",
         "--weights", "1,0,0,1", "--bias", "0,0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        line = process.stdout.readline()
        address = json.loads(line)["address"]
        with grpc.insecure_channel(address) as channel:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                infer_request("linear-a", [[0.2, 0.9]], False), timeout=5)
        assert list(response.outputs[1].contents.int64_contents) == [1]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
