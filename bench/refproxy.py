"""Reference pass-through proxies: the floor of what a Python gRPC proxy costs here.

Each forwards ModelInfer's raw bytes to one backend and the answer back: no routing, no
metadata, no stats. Run as rows beside the router, they show how much of the router's
cost is grpc's Python server and client machinery itself (the "tries" of issue 5). The
aio one runs as the router does by default: uvloop, and the backend call on grpc.aio's
Cython call (dataplane.backends.Backend.call_infer); `--plain` for asyncio's loop and
grpc.aio's own callable.

    python -m bench.refproxy --mode aio|sync --listen 127.0.0.1:P --backend 127.0.0.1:B
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent import futures

import grpc

from bench.frames import MODEL_INFER_PATH
from dataplane.backends import Backend
from dataplane.server import run_event_loop

SERVICE, METHOD = MODEL_INFER_PATH.strip("/").split("/")


def _identity(raw: bytes) -> bytes:
    return raw


async def serve_aio(listen: str, backend: str, plain: bool = False) -> None:
    if plain:
        channel = grpc.aio.insecure_channel(backend)
        forward = channel.unary_unary(MODEL_INFER_PATH, request_serializer=_identity,
                                      response_deserializer=_identity)

        async def infer(raw: bytes, context) -> bytes:
            return await forward(raw, timeout=30)
    else:
        lean = Backend(backend, ())
        channel = lean.channel

        async def infer(raw: bytes, context) -> bytes:
            return await lean.call_infer(raw, 30)

    server = grpc.aio.server()
    handlers = {METHOD: grpc.unary_unary_rpc_method_handler(infer, request_deserializer=_identity,
                                                            response_serializer=_identity)}
    if plain:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    else:
        server.add_registered_method_handlers(SERVICE, handlers)   # as the router does
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)
    await channel.close()


def serve_sync(listen: str, backend: str, threads: int) -> None:
    channel = grpc.insecure_channel(backend)
    forward = channel.unary_unary(MODEL_INFER_PATH, request_serializer=_identity, response_deserializer=_identity)

    def infer(raw: bytes, context) -> bytes:
        return forward(raw, timeout=30)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), maximum_concurrent_rpcs=None)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        METHOD: grpc.unary_unary_rpc_method_handler(infer, request_deserializer=_identity,
                                                    response_serializer=_identity)})])
    server.add_insecure_port(listen)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()
    channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="reference pass-through gRPC proxy")
    parser.add_argument("--mode", choices=("aio", "sync"), required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--plain", action="store_true", help="aio: asyncio's loop and grpc.aio's own callable")
    args = parser.parse_args(argv)
    if args.mode == "aio":
        run_event_loop(serve_aio(args.listen, args.backend, args.plain), "asyncio" if args.plain else "uvloop")
    else:
        serve_sync(args.listen, args.backend, args.threads)


if __name__ == "__main__":
    main()
