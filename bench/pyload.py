"""A Python load generator, for the one client h2load cannot drive: the proxyless client,
which routes inside the caller's process. The same generator also calls the backend
directly and through a router, so the three rows compare like with like.

    python -m bench.pyload --via channel --target 127.0.0.1:P --model dep_split ...
    python -m bench.pyload --via proxyless --etcd 127.0.0.1:2379 --etcd-prefix /bench ...

Threads each send one ModelInfer at a time over a sync channel for --duration seconds;
prints one JSON line: req/s, latency percentiles, grpc status codes, tsplit-variant counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter

import grpc

from bench.frames import MODEL_INFER_PATH, infer_request
from bench.stats import percentile


def run_threads(channel, model_name: str, threads: int, duration_s: float, warmup_s: float) -> dict:
    call = channel.unary_unary(MODEL_INFER_PATH)  # no serializers: raw bytes both ways
    request = infer_request(model_name).SerializeToString()
    lock = threading.Lock()
    latencies: list[float] = []
    codes: Counter = Counter()
    variants: Counter = Counter()
    start = time.perf_counter()
    timed_from = start + warmup_s
    deadline = timed_from + duration_s

    def worker() -> None:
        mine, my_codes, my_variants = [], Counter(), Counter()
        while True:
            sent = time.perf_counter()
            if sent >= deadline:
                break
            try:
                _, outcome = call.with_call(request, timeout=10)
                code = "OK"
                variant = dict(outcome.initial_metadata() or ()).get("tsplit-variant", "-")
            except grpc.RpcError as err:
                code, variant = err.code().name, "-"
            done = time.perf_counter()
            if sent >= timed_from:
                mine.append((done - sent) * 1e6)
                my_codes[code] += 1
                my_variants[variant] += 1
        with lock:
            latencies.extend(mine)
            codes.update(my_codes)
            variants.update(my_variants)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(duration_s + warmup_s + 30)
    elapsed = time.perf_counter() - timed_from
    ok = codes.get("OK", 0)
    return {"req_per_s": ok / elapsed, "requests": sum(codes.values()), "ok": ok,
            "errors": sum(codes.values()) - ok, "codes": dict(codes), "variants": dict(variants),
            "p50_ms": percentile(latencies, 50) / 1000 if latencies else None,
            "p99_ms": percentile(latencies, 99) / 1000 if latencies else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="python gRPC load generator for the bench")
    parser.add_argument("--via", choices=("channel", "proxyless"), required=True)
    parser.add_argument("--target", help="host:port for --via channel")
    parser.add_argument("--etcd", help="etcd endpoints for --via proxyless")
    parser.add_argument("--etcd-prefix", default="/tsplit")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.via == "channel":
        channel = grpc.insecure_channel(args.target)
        result = run_threads(channel, args.model, args.threads, args.duration, args.warmup)
        channel.close()
    else:
        from dataplane.proxyless import ProxylessClient
        client = ProxylessClient(args.etcd, args.etcd_prefix, client_id="bench-proxyless")
        if not client.wait_ready(15):
            print(json.dumps({"error": "proxyless client got no config from etcd in 15 s"}))
            client.close()
            return 1
        result = run_threads(client.channel(), args.model, args.threads, args.duration, args.warmup)
        client.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
