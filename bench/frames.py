"""Request bodies for h2load: the length-prefixed message framing of gRPC over HTTP/2, and
the v2 REST JSON body of the same request."""

from __future__ import annotations

import json
import struct

from tsplit.inference import grpc_predict_v2_pb2 as pb

MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """1 byte compressed flag + 4-byte big-endian length + the serialized message."""
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def parse_grpc_frame(body: bytes) -> bytes:
    """The message inside one gRPC frame; ValueError when body is not exactly one frame."""
    if len(body) < 5:
        raise ValueError("a gRPC frame is at least 5 bytes")
    flag, length = struct.unpack(">BI", body[:5])
    if flag not in (0, 1) or len(body) != 5 + length:
        raise ValueError(f"not one gRPC frame: flag {flag}, length {length}, body {len(body)} bytes")
    return body[5:]


def infer_request(model_name: str, features: int = 4) -> pb.ModelInferRequest:
    """A small FP32 [1, features] request, the shape of a tabular model's input."""
    return pb.ModelInferRequest(
        model_name=model_name,
        id="bench",
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP32", shape=[1, features],
            contents=pb.InferTensorContents(fp32_contents=[0.5 + i for i in range(features)]),
        )],
    )


def infer_request_body(model_name: str, features: int = 4) -> bytes:
    return grpc_frame(infer_request(model_name, features).SerializeToString())


def rest_infer_body(features: int = 4) -> bytes:
    """The v2 REST JSON body of infer_request (the model is named by the URL path)."""
    return json.dumps({"id": "bench", "inputs": [
        {"name": "input-0", "datatype": "FP32", "shape": [1, features],
         "data": [0.5 + i for i in range(features)]}]}).encode()


def large_request_body(model_name: str, mib: float) -> bytes:
    """A ModelInfer request for model_name carrying `mib` MiB of raw FP32 input, framed."""
    values = int(mib * (1 << 20)) // 4
    request = infer_request(model_name)
    request.ClearField("inputs")
    request.inputs.add(name="input-0", datatype="FP32", shape=[1, values])
    request.raw_input_contents.append(bytes(4 * values))
    return grpc_frame(request.SerializeToString())
