"""A minimal Open Inference Protocol v2 backend for the benchmarks, run as its own process.

Every row (direct, nginx, router) is served by these same backends, so the rows differ only
in what sits between h2load and the backend. It answers ModelInfer for any model_name (so
nginx, which rewrites nothing, can send the deployment slug), optionally after a fixed delay
(the "50 ms slower" challengers of the shadow row), and counts the requests it answered,
which the harness reads through a small JSON stats method to check that h2load's 2xx
answers really were answered by a backend, and to measure split shares.

With --http-listen it also serves the v2 REST infer call (`POST /v2/models/{name}[/versions/
{v}]/infer`, JSON) over HTTP/1.1 keep-alive on a second port, counted in the same counters:
the REST rows' backends (issue 12), a model's `http_endpoint`. The HTTP side is a small
asyncio protocol (Content-Length or chunked bodies, no JSON parsing: the answer is prebuilt),
so that, like the gRPC side, it costs little beside the hop it serves.

    python -m bench.backend --listen 127.0.0.1:0 --port-file P [--delay-ms 50] [--name b1]
        [--http-listen 127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
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
    http_listen: str = ""  # host:port of the v2 REST side; "" for none


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

    def count(self, model_name: str) -> None:
        self.requests += 1
        self.by_model[model_name] = self.by_model.get(model_name, 0) + 1

    def rest_answer(self, model_name: str) -> bytes:
        """The JSON body of a REST infer answer for model_name, built once."""
        key = "rest:" + model_name
        cached = self._answers.get(key)
        if cached is None:
            cached = json.dumps({"model_name": model_name, "id": "bench", "outputs": [
                {"name": "output-0", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]}).encode()
            self._answers[key] = cached
        return cached

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


_INFER_PATH = re.compile(rb"/v2/models/([^/?]+)(?:/versions/[^/?]+)?/infer")
_MAX_HEAD = 64 * 1024


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    """(method, target, headers with lower-case names) of an HTTP/1.1 request head (the
    bytes before the blank line). ValueError when it is not one."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.1 request line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def dechunk(buf: bytes) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body at the start of buf; None while
    incomplete. ValueError on a malformed chunk size."""
    body, pos = [], 0
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(buf[pos:end].split(b";")[0], 16)
        start = end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", end)
            if buf[start:start + 2] == b"\r\n":
                return b"".join(body), start + 2
            return None if trailer_end < 0 else (b"".join(body), trailer_end + 4)
        if len(buf) < start + size + 2:
            return None
        body.append(buf[start:start + size])
        pos = start + size + 2


class RestProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests answered in order, kept alive."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed answer is pending: later requests wait in buf

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while self.buf and self.transport is not None and not self.transport.is_closing():
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.reply(431, b'{"error": "request head too large"}', close=True)
                return
            try:
                method, target, headers = parse_head(self.buf[:head_end])
                start = head_end + 4
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    done = dechunk(self.buf[start:])
                    if done is None:
                        return
                    body, used = done
                    self.buf = self.buf[start + used:]
                else:
                    length = int(headers.get(b"content-length", b"0"))
                    if len(self.buf) < start + length:
                        return
                    body, self.buf = self.buf[start:start + length], self.buf[start + length:]
            except ValueError as err:
                self.reply(400, json.dumps({"error": str(err)}).encode(), close=True)
                return
            close = headers.get(b"connection", b"").lower() == b"close"
            match = _INFER_PATH.fullmatch(target.split(b"?")[0])
            if method == b"POST" and match:
                model_name = match.group(1).decode()
                if self.backend.settings.delay_ms:
                    self.busy = True
                    asyncio.get_running_loop().call_later(self.backend.settings.delay_ms / 1000,
                                                          self.delayed_answer, model_name, close)
                    return
                self.backend.count(model_name)
                self.reply(200, self.backend.rest_answer(model_name), close)
            elif method == b"GET":
                self.reply(200, b'{"live": true, "ready": true}', close)
            else:
                self.reply(404, b'{"error": "not found"}', close)

    def delayed_answer(self, model_name: str, close: bool) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.backend.count(model_name)
        self.reply(200, self.backend.rest_answer(model_name), close)
        self.process()

    def reply(self, status: int, body: bytes, close: bool = False) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                             % (status, reason, len(body), b"connection: close\r\n" if close else b"", body))
        if close:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


async def serve(settings: BackendSettings) -> None:
    # Any request size: the proxy in front decides its limits (the 8 MiB shadow row).
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", -1)])
    backend = Backend(settings)
    server.add_generic_rpc_handlers(backend.handlers())
    port = server.add_insecure_port(settings.listen)
    await server.start()
    rest = None
    if settings.http_listen:
        host, _, http_port = settings.http_listen.rpartition(":")
        rest = await asyncio.get_running_loop().create_server(lambda: RestProtocol(backend), host, int(http_port))
    if settings.port_file:
        settings.port_file.write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if rest is not None:
        rest.close()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark OIP v2 backend")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--name", default="backend")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--http-listen", default="", help="host:port of the v2 REST side (HTTP/1.1)")
    args = parser.parse_args(argv)
    asyncio.run(serve(BackendSettings(args.listen, args.name, args.delay_ms, args.port_file, args.http_listen)))


if __name__ == "__main__":
    main()
