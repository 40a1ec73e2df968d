"""A small Open Inference Protocol v2 model server: tests, the demo and benchmarks.

Each model is a deterministic linear classifier: input FP32 [batch, n] (any numeric
datatype, raw or typed contents), outputs "probabilities" FP32 [batch, classes]
(softmax of x @ weights + bias) and "label" INT64 [batch, 1] (the argmax). A model may
add a fixed latency and fail a share of its requests with a chosen gRPC code: request k
fails when floor(k * error_rate) grows, so the failures are exact and evenly spread.
Answers use the request's form: raw contents for a raw request, typed ones otherwise.

The router must not import this module: real backends are MLServer, Triton, KServe.

    tsplit-demo-model --listen 127.0.0.1:9001 --model-name linear-a --weights 1,0,0,1 --bias 0,0

`--weights` is row-major [inputs, classes]; rows may also be separated by ';' ("1,0;0,1").
Every flag has a variable TSPLIT_DEMO_MODEL_<FLAG> (e.g. TSPLIT_DEMO_MODEL_LISTEN). The
bound address is printed on stdout as one JSON line, {"address": "127.0.0.1:PORT"}.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import math
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dataplane.tensors import DATATYPES, Tensor, TensorError, decode_input, encode_raw, fill_contents
from tsplit.inference import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
from tsplit.settings import (
    SettingsError, check_host_port, check_optional_host_port, join_host_port, option, parse_flags, parse_host_port,
)

log = logging.getLogger("tsplit.demo_model")

SERVER_NAME = "tsplit-demo-model"
SERVER_VERSION = "0.1.0"
PLATFORM = "tsplit-demo-linear"
INPUT_NAME = "input"
PROBABILITIES, LABEL = "probabilities", "label"


@dataclass(frozen=True)
class DemoModel:
    name: str
    weights: tuple[tuple[float, ...], ...]   # [inputs][classes]
    bias: tuple[float, ...]                  # [classes]
    version: str = "1"
    latency_ms: float = 0.0
    error_rate: float = 0.0                  # 0..1 of requests fail with error_code
    error_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name: must not be empty")
        if not self.weights or not self.weights[0]:
            raise ValueError(f"model {self.name}: weights must have at least one input and one class")
        if any(len(row) != len(self.bias) for row in self.weights):
            raise ValueError(f"model {self.name}: every weights row needs one value per class "
                             f"({len(self.bias)}, the length of bias)")
        if not all(math.isfinite(v) for row in self.weights for v in (*row, *self.bias)):
            raise ValueError(f"model {self.name}: weights and bias must be finite numbers")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"model {self.name}: error_rate must be within 0..1")
        if not 0.0 <= self.latency_ms < 3_600_000:
            raise ValueError(f"model {self.name}: latency_ms must be within 0..3600000")
        if self.error_code == grpc.StatusCode.OK:
            raise ValueError(f"model {self.name}: error_code must be an error, not OK")

    @property
    def inputs(self) -> int:
        return len(self.weights)

    @property
    def classes(self) -> int:
        return len(self.bias)

    def predict(self, rows: Sequence[Sequence[float]]) -> tuple[list[float], list[int]]:
        """Flat probabilities [batch * classes] and labels [batch]."""
        probabilities, labels = [], []
        for x in rows:
            logits = [b + sum(xi * self.weights[i][c] for i, xi in enumerate(x)) for c, b in enumerate(self.bias)]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            total = sum(exps)
            probabilities.extend(e / total for e in exps)
            labels.append(logits.index(top))
        return probabilities, labels

    def metadata(self) -> pb.ModelMetadataResponse:
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.name, versions=[self.version], platform=PLATFORM,
            inputs=[meta(name=INPUT_NAME, datatype="FP32", shape=[-1, self.inputs])],
            outputs=[meta(name=PROBABILITIES, datatype="FP32", shape=[-1, self.classes]),
                     meta(name=LABEL, datatype="INT64", shape=[-1, 1])])


DEFAULT_MODEL = DemoModel("linear", weights=((1.0, 0.0), (0.0, 1.0)), bias=(0.0, 0.0))


class _ErrorSchedule:
    """Request k (1-based) fails when floor(k * rate) > floor((k - 1) * rate)."""

    def __init__(self, rate: float):
        self.rate, self.count = rate, 0

    def next_fails(self) -> bool:
        self.count += 1
        return math.floor(self.count * self.rate) > math.floor((self.count - 1) * self.rate)


class DemoInferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: Sequence[DemoModel]):
        names = [m.name for m in models]
        if not models or len(set(names)) != len(names):
            raise ValueError("the demo server needs at least one model, and unique model names")
        self.models = {m.name: m for m in models}
        self._errors = {m.name: _ErrorSchedule(m.error_rate) for m in models}

    async def _model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> DemoModel:
        model = self.models.get(name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {name!r} is not served here (models: {', '.join(self.models)})")
        if version and version != model.version:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {name!r} has no version {version!r} (versions: {model.version})")
        return model

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelReady(self, request, context):
        await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        return (await self._model(request.name, request.version, context)).metadata()

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        model = await self._model(request.model_name, request.model_version, context)
        rows, raw = await self._rows(model, request, context)
        wanted = [o.name for o in request.outputs] or [PROBABILITIES, LABEL]
        unknown = [n for n in wanted if n not in (PROBABILITIES, LABEL)]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"outputs: model {model.name!r} has no output {unknown[0]!r} "
                                f"(outputs: {PROBABILITIES}, {LABEL})")
        if model.latency_ms:
            await asyncio.sleep(model.latency_ms / 1000)
        if model.error_rate and self._errors[model.name].next_fails():
            await context.abort(model.error_code, f"demo model {model.name!r}: injected error "
                                                  f"(error rate {model.error_rate:g})")
        probabilities, labels = model.predict(rows)
        tensors = {
            PROBABILITIES: Tensor(PROBABILITIES, "FP32", (len(rows), model.classes), tuple(probabilities)),
            LABEL: Tensor(LABEL, "INT64", (len(rows), 1), tuple(labels)),
        }
        return _response(model, request.id, [tensors[n] for n in wanted], raw)

    async def _rows(self, model: DemoModel, request: pb.ModelInferRequest,
                    context: grpc.aio.ServicerContext) -> tuple[list[tuple[float, ...]], bool]:
        """The input rows, and whether the request used raw contents."""
        if len(request.inputs) != 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"inputs: model {model.name!r} takes exactly one input, got {len(request.inputs)}")
        message = request.inputs[0]
        shape = list(message.shape)
        if len(shape) != 2 or shape[1] != model.inputs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input {message.name!r}: shape {shape} must be [batch, {model.inputs}]")
        dtype = DATATYPES.get(message.datatype)
        if dtype is None or not dtype.is_numeric:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input {message.name!r}: datatype {message.datatype!r} is not numeric (use FP32)")
        try:
            tensor = decode_input(request, 0)
        except TensorError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        values, width = tensor.values, model.inputs
        if not all(math.isfinite(v) for v in values):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {message.name!r}: values must be finite")
        return [values[i:i + width] for i in range(0, len(values), width)], bool(request.raw_input_contents)


def _response(model: DemoModel, request_id: str, tensors: list[Tensor], raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
    for t in tensors:
        out = response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if raw:
            response.raw_output_contents.append(encode_raw(t.dtype, t.values, t.name))
        else:
            fill_contents(out.contents, t.dtype, t.values, t.name)
    return response


# --- running it ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunningDemoServer:
    address: str
    port: int
    server: grpc.aio.Server

    async def stop(self, grace: float | None = 0.5) -> None:
        await self.server.stop(grace)


async def start_demo_server(models: Sequence[DemoModel] = (DEFAULT_MODEL,), listen: str = "127.0.0.1:0",
                            options: Sequence[tuple[str, Any]] = ()) -> RunningDemoServer:
    """Serve `models` on the running event loop; `listen` ":0" picks a free port; `options`
    are grpc server options (e.g. grpc.max_connection_age_ms)."""
    host, port = parse_host_port(listen)
    server = grpc.aio.server(options=list(options))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(DemoInferenceService(models), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(join_host_port(host, port))
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningDemoServer(join_host_port(host, port), port, server)


@dataclass(frozen=True)
class ThreadedDemoServer:
    address: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _running: RunningDemoServer

    def stop(self, grace: float | None = 0.5, timeout: float = 5.0) -> None:
        asyncio.run_coroutine_threadsafe(self._running.stop(grace), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


def start_demo_server_in_thread(models: Sequence[DemoModel] = (DEFAULT_MODEL,), listen: str = "127.0.0.1:0",
                                timeout: float = 5.0) -> ThreadedDemoServer:
    """The same server on an event loop of its own in a daemon thread (for synchronous
    callers, and to keep a model's work off the caller's event loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="demo-model-server", daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(start_demo_server(models, listen), loop).result(timeout)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        raise
    return ThreadedDemoServer(running.address, running.port, loop, thread, running)


# --- the v2 REST port (for models registered with an http_endpoint) -----------------------

def _rest_metadata(model: DemoModel) -> dict:
    return {"name": model.name, "versions": [model.version], "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, model.inputs]}],
            "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, model.classes]},
                        {"name": LABEL, "datatype": "INT64", "shape": [-1, 1]}]}


def _flatten(data) -> list:
    if isinstance(data, list):
        return [v for item in data for v in _flatten(item)]
    return [data]


class _RestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def rest_infer(models: Mapping[str, DemoModel], name: str, version: str, body: bytes) -> dict:
    """One v2 REST inference call (the same model as ModelInfer); _RestError on bad input."""
    model = models.get(name)
    if model is None or (version and version != model.version):
        raise _RestError(404, f"model {name!r} (version {version or 'any'}) is not served here")
    try:
        request = json.loads(body)
    except ValueError as err:
        raise _RestError(400, f"the body is not JSON: {err}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _RestError(400, f"inputs: model {model.name!r} takes exactly one input")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or shape[1] != model.inputs:
        raise _RestError(400, f"input: shape {shape} must be [batch, {model.inputs}]")
    values = _flatten(tensor.get("data"))
    if len(values) != shape[0] * shape[1] or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise _RestError(400, f"input: data must hold {shape[0] * shape[1]} finite numbers")
    if model.latency_ms:
        threading.Event().wait(model.latency_ms / 1000)
    rows = [values[i:i + model.inputs] for i in range(0, len(values), model.inputs)]
    probabilities, labels = model.predict(rows)
    out = {"model_name": model.name, "model_version": model.version,
           "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [len(rows), model.classes],
                        "data": probabilities},
                       {"name": LABEL, "datatype": "INT64", "shape": [len(rows), 1], "data": labels}]}
    if request.get("id"):
        out["id"] = request["id"]
    return out


class _RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the router pools its connections
    models: Mapping[str, DemoModel] = {}

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug("rest: " + format, *args)

    def _send(self, status: int, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _model_path(self) -> tuple[str, str, str] | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            return None
        name, rest = parts[2], parts[3:]
        version = ""
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        return name, version, "/".join(rest)

    def do_GET(self) -> None:
        if self.path in ("/v2/health/live", "/v2/health/ready"):
            return self._send(200, {"live": True} if self.path.endswith("live") else {"ready": True})
        if self.path == "/v2":
            return self._send(200, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})
        found = self._model_path()
        model = self.models.get(found[0]) if found else None
        if found is None or model is None or found[2] not in ("", "ready"):
            return self._send(404, {"error": f"no route or model for {self.path}"})
        self._send(200, {"name": model.name, "ready": True} if found[2] == "ready" else _rest_metadata(model))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        found = self._model_path()
        if found is None or found[2] != "infer":
            return self._send(404, {"error": f"no route for POST {self.path}"})
        try:
            self._send(200, rest_infer(self.models, found[0], found[1], body))
        except _RestError as err:
            self._send(err.status, {"error": str(err)})


@dataclass(frozen=True)
class RestDemoServer:
    """The v2 REST face of the demo models on a thread of its own."""
    address: str
    port: int
    _server: http.server.ThreadingHTTPServer
    _thread: threading.Thread

    def stop(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def start_demo_rest_server(models: Sequence[DemoModel] = (DEFAULT_MODEL,),
                           listen: str = "127.0.0.1:0") -> RestDemoServer:
    """Serve `models` over v2 REST (HTTP/1.1, keep-alive) in a daemon thread."""
    host, port = parse_host_port(listen)
    handler = type("DemoRestHandler", (_RestHandler,), {"models": {m.name: m for m in models}})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-model-rest", daemon=True)
    thread.start()
    port = server.server_address[1]
    return RestDemoServer(join_host_port(host, port), port, server, thread)


# --- command line -------------------------------------------------------------------------

def parse_weights(text: str, classes: int | None) -> tuple[tuple[float, ...], ...]:
    """'1,0;0,1' (rows = inputs) or a flat row-major '1,0,0,1' split by `classes`."""
    rows = [r for r in text.replace(" ", "").split(";") if r]
    values = [[float(v) for v in r.split(",") if v] for r in rows]
    if len(values) == 1 and classes:
        flat = values[0]
        if len(flat) % classes:
            raise ValueError(f"--weights: {len(flat)} values do not split into rows of {classes} classes")
        values = [flat[i:i + classes] for i in range(0, len(flat), classes)]
    return tuple(tuple(r) for r in values)


@dataclass(frozen=True)
class DemoModelFlags:
    """tsplit-demo-model's flags (tsplit.settings: variables TSPLIT_DEMO_MODEL_<FLAG>)."""

    listen: str = option("127.0.0.1:0", "host:port (':0' picks a free port)", parse=check_host_port)
    http_listen: str = option("", "host:port of a v2 REST port beside gRPC (':0' picks a free port; empty: none)",
                              parse=check_optional_host_port)
    model_name: str = option(DEFAULT_MODEL.name, "the model's name")
    model_version: str = option(DEFAULT_MODEL.version, "the model's version")
    weights: str = option("1,0;0,1", "row-major [inputs, classes]: '1,0,0,1' (classes from --bias) or '1,0;0,1'")
    bias: str = option("", "one value per class (default: zeros)")
    latency_ms: float = option(0.0, "added latency of every answer, ms")
    error_rate: float = option(0.0, "share of requests (0..1) that fail with --error-code")
    error_code: str = option("INTERNAL", "gRPC status code name, e.g. INTERNAL, UNAVAILABLE, RESOURCE_EXHAUSTED")


def parse_args(argv: Sequence[str] | None) -> tuple[str, DemoModel, str]:
    prog = "tsplit-demo-model"
    try:
        args = parse_flags(DemoModelFlags, "demo_model", argv, prog=prog, description=__doc__.split("\n\n")[0])
        try:
            bias = tuple(float(v) for v in args.bias.split(",")) if args.bias else None
            weights = parse_weights(args.weights, len(bias) if bias else None)
            code = grpc.StatusCode[args.error_code.upper()]
            model = DemoModel(args.model_name, weights, bias or tuple(0.0 for _ in weights[0]), args.model_version,
                              args.latency_ms, args.error_rate, code)
        except KeyError:
            raise SettingsError(f"--error-code: {args.error_code!r} is not a gRPC status code name") from None
        except (ValueError, IndexError) as err:
            raise SettingsError(str(err) if str(err).startswith(("--", "model")) else f"--weights/--bias: {err}") \
                from None
    except SettingsError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return args.listen, model, args.http_listen


async def _serve(listen: str, model: DemoModel, http_listen: str = "") -> None:
    running = await start_demo_server([model], listen)
    rest = start_demo_rest_server([model], http_listen) if http_listen else None
    print(json.dumps({"address": running.address, **({"http_address": rest.address} if rest else {})}), flush=True)
    log.info("serving model %s (%d inputs, %d classes) on %s", model.name, model.inputs, model.classes,
             running.address)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    if rest is not None:
        rest.stop()
    await running.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    listen, model, http_listen = parse_args(argv)
    asyncio.run(_serve(listen, model, http_listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
