"""The Open Inference Protocol v2 messages, from a private descriptor pool.

Triton's client, MLServer and KServe each register the proto package `inference` in
protobuf's default descriptor pool, and so does our generated module
(tsplit.inference.grpc_predict_v2_pb2): two of them in one process fail with "duplicate
symbol". The data path (dispatch, mirrors, comparison) therefore never imports the
generated module. It uses the classes below, built from the same serialized file
descriptor loaded into a pool of its own, so a caller that already imported any of those
libraries can still use the proxyless client.

The serialized descriptor is read from the generated module's source (the argument of its
`AddSerializedFile(...)` call) without executing it, so scripts/genproto stays the one
source of truth.
"""

from __future__ import annotations

import ast
import importlib.util

from google.protobuf import descriptor_pool, message_factory

GENERATED_MODULE = "tsplit.inference.grpc_predict_v2_pb2"
PACKAGE = "inference"


def serialized_file_descriptor(module: str = GENERATED_MODULE) -> bytes:
    """The FileDescriptorProto bytes a generated _pb2 module registers, read from its
    source text (the module itself is not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the generated module {module}")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read(), spec.origin)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args):
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise ImportError(f"{module} has no AddSerializedFile(b'...') call: regenerate it with scripts/genproto")


def _private_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(serialized_file_descriptor())
    return pool


POOL = _private_pool()


def message_class(name: str) -> type:
    """The class of message `inference.<name>` in the private pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")
InferTensorContents = message_class("InferTensorContents")
ServerLiveResponse = message_class("ServerLiveResponse")
ServerReadyResponse = message_class("ServerReadyResponse")
ServerMetadataResponse = message_class("ServerMetadataResponse")
ModelReadyResponse = message_class("ModelReadyResponse")
ModelMetadataResponse = message_class("ModelMetadataResponse")
