"""A Python gRPC client's view of each row: sampled answers with their status and tsplit
metadata, backend counters, and health."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.backend import RESET_METHOD, STATS_METHOD
from bench.frames import MODEL_INFER_PATH, infer_request
from tsplit.inference import grpc_predict_v2_pb2 as pb


@dataclass
class SampleReport:
    sent: int = 0
    ok: int = 0
    codes: Counter = field(default_factory=Counter)
    variants: Counter = field(default_factory=Counter)
    first_error: str = ""

    def to_json(self) -> dict:
        return {"sent": self.sent, "ok": self.ok, "codes": dict(self.codes),
                "variants": dict(self.variants), "first_error": self.first_error}


def _identity(raw: bytes) -> bytes:
    return raw


async def sample_answers(address: str, model_name: str, count: int = 20, timeout: float = 2.0) -> SampleReport:
    """Send count ModelInfer requests one by one; count grpc statuses and tsplit-variant."""
    report = SampleReport()
    request = infer_request(model_name).SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)
        for _ in range(count):
            report.sent += 1
            try:
                invocation = call(request, timeout=timeout)
                raw = await invocation
                metadata = dict(await invocation.initial_metadata() or ())
                pb.ModelInferResponse.FromString(raw)  # a real answer, not just a status
                report.ok += 1
                report.codes["OK"] += 1
                report.variants[metadata.get("tsplit-variant", "-")] += 1
            except grpc.aio.AioRpcError as err:
                report.codes[err.code().name] += 1
                report.first_error = report.first_error or f"{err.code().name}: {err.details()}"
    return report


async def backend_stats(address: str) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        raw = await channel.unary_unary(STATS_METHOD)(b"", timeout=3)
    return json.loads(raw)


async def reset_backend(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.unary_unary(RESET_METHOD)(b"", timeout=3)


async def wait_serving(address: str, timeout: float) -> float:
    """Seconds until the gRPC health service says SERVING for ""; TimeoutError after timeout."""
    start = time.monotonic()
    deadline = start + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.01)
    raise TimeoutError(f"{address} not SERVING within {timeout}s")
