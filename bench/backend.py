"""A minimal Open Inference Protocol v2 backend for the benchmarks, run as its own process.

Every row (direct, nginx, router) is served by these same backends, so the rows differ only
in what sits between h2load and the backend. It answers ModelInfer for any model_name (so
nginx, which rewrites nothing, can send the deployment slug), optionally after a fixed delay
(the "50 ms slower" challengers of the shadow row), and counts the requests it answered,
which the harness reads through a small JSON stats method to check that h2load's 2xx
answers really were answered by a backend, and to measure split shares.

    python -m bench.backend --listen 127.0.0.1:0 --port-file P [--delay-ms 50] [--name b1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from tsplit.inference import grpc_predict_v2_pb2 as pb

STATS_METHOD = "/tsplit.bench.Backend/Stats"
RESET_METHOD = "/tsplit.bench.Backend/Reset"
SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class BackendSettings:
    listen: str = "127.0.0.1:0"
    name: str = "backend"
    delay_ms: float = 0.0
    port_file: Path | None = None


def _identity(raw: bytes) -> bytes:
    return raw


class Backend:
    def __init__(self, settings: BackendSettings):
        self.settings = settings
        self.requests = 0
        self.by_model: dict[str, int] = {}
        self._answers: dict[str, bytes] = {}

    def answer(self, model_name: str) -> bytes:
        """The serialized response for model_name, built once: a [1, 2] FP32 output."""
        cached = self._answers.get(model_name)
        if cached is None:
            cached = pb.ModelInferResponse(
                model_name=model_name, id="bench",
                outputs=[pb.ModelInferResponse.InferOutputTensor(
                    name="output-0", datatype="FP32", shape=[1, 2],
                    contents=pb.InferTensorContents(fp32_contents=[0.25, 0.75]))],
            ).SerializeToString()
            self._answers[model_name] = cached
        return cached

    async def model_infer(self, raw: bytes, context) -> bytes:
        request = pb.ModelInferRequest.FromString(raw)
        if self.settings.delay_ms:
            await asyncio.sleep(self.settings.delay_ms / 1000)
        self.requests += 1
        self.by_model[request.model_name] = self.by_model.get(request.model_name, 0) + 1
        return self.answer(request.model_name)

    async def stats(self, raw: bytes, context) -> bytes:
        return json.dumps({"name": self.settings.name, "requests": self.requests, "by_model": self.by_model}).encode()

    async def reset(self, raw: bytes, context) -> bytes:
        self.requests = 0
        self.by_model = {}
        return b"{}"

    async def server_live(self, raw: bytes, context) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, raw: bytes, context) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()

    async def model_ready(self, raw: bytes, context) -> bytes:
        return pb.ModelReadyResponse(ready=True).SerializeToString()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn):
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_identity, response_serializer=_identity)
        inference = grpc.method_handlers_generic_handler(SERVICE, {
            "ModelInfer": unary(self.model_infer),
            "ServerLive": unary(self.server_live),
            "ServerReady": unary(self.server_ready),
            "ModelReady": unary(self.model_ready),
        })
        bench = grpc.method_handlers_generic_handler("tsplit.bench.Backend", {
            "Stats": unary(self.stats), "Reset": unary(self.reset),
        })
        return [inference, bench]


async def serve(settings: BackendSettings) -> None:
    # Any request size: the proxy in front decides its limits (the 8 MiB shadow row).
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", -1)])
    server.add_generic_rpc_handlers(Backend(settings).handlers())
    port = server.add_insecure_port(settings.listen)
    await server.start()
    if settings.port_file:
        settings.port_file.write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark OIP v2 backend")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--name", default="backend")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(serve(BackendSettings(args.listen, args.name, args.delay_ms, args.port_file)))


if __name__ == "__main__":
    main()
