"""A Python gRPC client's view of each row: sampled answers with their status and tsplit
metadata, backend counters, and health."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.backend import RESET_METHOD, STATS_METHOD
from bench.frames import MODEL_INFER_PATH, infer_request, rest_infer_body
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


def header_pairs(headers: tuple[str, ...]) -> list[tuple[str, str]]:
    """("name: value", ...) as (lower-case name, value) pairs."""
    pairs = []
    for header in headers:
        name, _, value = header.partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


async def sample_rest(address: str, model_name: str, count: int = 20, timeout: float = 2.0,
                      headers: tuple[str, ...] = ()) -> SampleReport:
    """Send count v2 REST infer requests one by one (HTTP/1.1); count HTTP statuses (a 200
    must carry outputs) and tsplit-variant."""
    report = SampleReport()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=timeout, headers=dict(header_pairs(headers))) as client:
        for _ in range(count):
            report.sent += 1
            try:
                resp = await client.post(f"/v2/models/{model_name}/infer", content=rest_infer_body(),
                                         headers={"content-type": "application/json"})
                if resp.status_code == 200 and "outputs" in resp.json():
                    report.ok += 1
                    report.codes["200"] += 1
                    report.variants[resp.headers.get("tsplit-variant", "-")] += 1
                    continue
                report.codes[str(resp.status_code)] += 1
                report.first_error = report.first_error or f"HTTP {resp.status_code}: {resp.text[:200]}"
            except (httpx.HTTPError, ValueError) as err:
                report.codes[type(err).__name__] += 1
                report.first_error = report.first_error or f"{type(err).__name__}: {err}"
    return report


async def sample_answers(address: str, model_name: str, count: int = 20, timeout: float = 2.0,
                         headers: tuple[str, ...] = (), rest: bool = False) -> SampleReport:
    """Send count ModelInfer requests one by one (with headers as metadata); count grpc
    statuses and tsplit-variant. rest: the same over v2 REST (sample_rest)."""
    if rest:
        return await sample_rest(address, model_name, count, timeout, headers)
    report = SampleReport()
    request = infer_request(model_name).SerializeToString()
    metadata = tuple(header_pairs(headers)) or None
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)
        for _ in range(count):
            report.sent += 1
            try:
                invocation = call(request, timeout=timeout, metadata=metadata)
                raw = await invocation
                answered = dict(await invocation.initial_metadata() or ())
                pb.ModelInferResponse.FromString(raw)  # a real answer, not just a status
                report.ok += 1
                report.codes["OK"] += 1
                report.variants[answered.get("tsplit-variant", "-")] += 1
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
