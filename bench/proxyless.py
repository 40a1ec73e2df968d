"""The proxyless rows (issue 7): a Python gRPC client with the routing inside it, against
the same client calling the backend directly and through nginx's split.

h2load cannot run a proxyless client (the routing lives in the caller's process), so these
rows share one load generator instead: this module, run as its own process with the
generated OIP v2 stub, closed loop, as many calls in flight as the h2load rows (4 x 16).
Every row differs only in the channel under the stub: a plain grpc channel to the champion
backend ("direct"), one to nginx's 90/10 split, or a ProxylessClient's channel (dep_split,
90/10, the router's routing in-process). Both transports are measured: grpc.aio (one event
loop, the client made with start_in_loop() as an asyncio service would) and sync grpc (one
thread per call in flight). The targets compare rows of the same
transport: proxyless >= 0.9x direct and >= 1.0x nginx's split.

    python -m bench.proxyless --mode proxyless --transport aio --etcd 127.0.0.1:2379 \
        --prefix /bench --model-name dep_split --concurrency 64 --duration 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import probe, procs
from bench.stats import median_or_none, percentile, ratio, within_binomial_bound

MODES = ("direct", "proxyless")
TRANSPORTS = ("aio", "sync")
TARGET_BOUNDS = {"direct": 0.9, "nginx": 1.0}


@dataclass(frozen=True)
class PyLoad:
    concurrency: int = 64
    duration_s: float = 6.0
    warmup_requests: int = 1000
    timeout_s: float = 10.0

    def describe(self) -> str:
        return f"python stub, {self.concurrency} in flight, {self.duration_s:g}s after {self.warmup_requests} warm-up"


@dataclass(frozen=True)
class PyTarget:
    row: str
    mode: str                      # "direct": a plain channel to address; "proxyless": a ProxylessClient
    transport: str                 # "aio" or "sync"
    address: str                   # direct: host:port; proxyless: unused
    model_name: str
    answer_backends: tuple[str, ...]
    compare_with: str = "direct"   # the row name whose figures this one is the ratio of (within its transport)


# ---- the load generator (its own process) -----------------------------------------------

def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _summary(latencies: list[float], errors: int, first_error: str, seconds: float, cpu_s: float) -> dict:
    ok = len(latencies)
    return {"req_per_s": ok / seconds if seconds > 0 else 0.0, "requests": ok + errors, "ok": ok, "errors": errors,
            "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
            "cpu_us_per_req": cpu_s / ok * 1e6 if ok else None, "first_error": first_error}


def _sync_stub_and_client(args):
    import grpc
    from tsplit.inference import grpc_predict_v2_pb2_grpc as pb_grpc
    if args.mode == "direct":
        channel = grpc.insecure_channel(args.target)
        return pb_grpc.GRPCInferenceServiceStub(channel), channel, None
    from dataplane.proxyless import ProxylessClient
    client = ProxylessClient(args.etcd, args.prefix, client_id=f"bench-px-{os.getpid()}", wait_ready_s=10)
    if not client.wait_ready(15):
        raise SystemExit("the proxyless client got no config from etcd within 15 s")
    channel = client.channel()
    return pb_grpc.GRPCInferenceServiceStub(channel), channel, client


async def _aio_stub_and_client(args):
    """An asyncio service's way: the client shares the service's loop (start_in_loop)."""
    import grpc
    from tsplit.inference import grpc_predict_v2_pb2_grpc as pb_grpc
    if args.mode == "direct":
        channel = grpc.aio.insecure_channel(args.target)
        return pb_grpc.GRPCInferenceServiceStub(channel), channel, None
    from dataplane.proxyless import ProxylessClient
    client = await ProxylessClient.start_in_loop(args.etcd, args.prefix, client_id=f"bench-px-{os.getpid()}",
                                                 wait_ready_s=10)
    if not await client.wait_ready_async(15):
        raise SystemExit("the proxyless client got no config from etcd within 15 s")
    channel = client.aio_channel()
    return pb_grpc.GRPCInferenceServiceStub(channel), channel, client


async def _aio_load(args) -> dict:
    import grpc
    from bench.frames import infer_request
    stub, channel, client = await _aio_stub_and_client(args)
    request = infer_request(args.model_name)
    state = {"errors": 0, "first_error": ""}

    async def worker(latencies: list[float], until: float | None, count: int | None) -> None:
        done = 0
        while (until is None or time.perf_counter() < until) and (count is None or done < count):
            started = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=args.timeout)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError as err:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or f"{err.code().name}: {err.details()}"
            done += 1

    per_worker = max(1, args.warmup // args.concurrency)
    await asyncio.gather(*(worker([], None, per_worker) for _ in range(args.concurrency)))
    state.update(errors=0, first_error="")
    lists: list[list[float]] = [[] for _ in range(args.concurrency)]
    cpu, started = _cpu_s(), time.perf_counter()
    until = started + args.duration
    await asyncio.gather(*(worker(lst, until, None) for lst in lists))
    seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu
    result = _summary([x for lst in lists for x in lst], state["errors"], state["first_error"], seconds, cpu)
    if client is not None:
        await client.aclose()
    else:
        await channel.close()
    return result


def _sync_load(args) -> dict:
    import grpc
    from bench.frames import infer_request
    stub, channel, client = _sync_stub_and_client(args)
    request = infer_request(args.model_name)
    lock = threading.Lock()
    state = {"errors": 0, "first_error": ""}

    def worker(latencies: list[float], duration: float | None, count: int | None, gate: threading.Barrier) -> None:
        gate.wait()
        until = None if duration is None else time.perf_counter() + duration
        done = 0
        while (until is None or time.perf_counter() < until) and (count is None or done < count):
            started = time.perf_counter()
            try:
                stub.ModelInfer(request, timeout=args.timeout)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError as err:
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or f"{err.code().name}: {err.details()}"
            done += 1

    def run(lists: list[list[float]], duration: float | None, count: int | None) -> float:
        """Release every thread at once; the time they were released."""
        gate = threading.Barrier(args.concurrency + 1)
        threads = [threading.Thread(target=worker, args=(lst, duration, count, gate), daemon=True) for lst in lists]
        for t in threads:
            t.start()
        gate.wait()
        released = time.perf_counter()
        for t in threads:
            t.join(args.duration + args.timeout + 30)
        return released

    run([[] for _ in range(args.concurrency)], None, max(1, args.warmup // args.concurrency))
    state.update(errors=0, first_error="")
    lists: list[list[float]] = [[] for _ in range(args.concurrency)]
    cpu = _cpu_s()
    started = run(lists, args.duration, None)
    seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu
    result = _summary([x for lst in lists for x in lst], state["errors"], state["first_error"], seconds, cpu)
    if client is not None:
        client.close()
    else:
        channel.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxyless", description="proxyless-row load generator")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--target", default="", help="direct: host:port to call")
    parser.add_argument("--etcd", default="", help="proxyless: etcd endpoints")
    parser.add_argument("--prefix", default="/tsplit", help="proxyless: etcd prefix")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.mode == "direct" and not args.target:
        parser.error("--mode direct needs --target")
    if args.mode == "proxyless" and not args.etcd:
        parser.error("--mode proxyless needs --etcd")
    result = asyncio.run(_aio_load(args)) if args.transport == "aio" else _sync_load(args)
    print(json.dumps(result), flush=True)
    return 0


# ---- the rows (run by bench.harness) ----------------------------------------------------

def generator_command(target: PyTarget, load: PyLoad, etcd: str, prefix: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.proxyless", "--mode", target.mode, "--transport", target.transport,
           "--model-name", target.model_name, "--concurrency", str(load.concurrency),
           "--duration", str(load.duration_s), "--warmup", str(load.warmup_requests),
           "--timeout", str(load.timeout_s)]
    if target.mode == "direct":
        cmd += ["--target", target.address]
    else:
        cmd += ["--etcd", etcd, "--prefix", prefix]
    return cmd


async def _answered(backends: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    total, by_model = 0, Counter()
    for address in backends:
        stats = await probe.backend_stats(address)
        total += stats["requests"]
        by_model.update(stats["by_model"])
    return total, dict(by_model)


async def run_once(target: PyTarget, load: PyLoad, work_dir: Path, etcd: str, prefix: str) -> dict:
    """One generator run; its figures, with the backends' counts as the check that every
    OK answer was a backend's (warm-up included in the counts, so: at least)."""
    for address in target.answer_backends:
        await probe.reset_backend(address)
    log_path = work_dir / f"pygen-{target.transport}-{target.mode}.log"
    with open(log_path, "ab") as log, procs.StolenDuring() as stolen:
        out = await asyncio.to_thread(
            subprocess.run, generator_command(target, load, etcd, prefix), stdout=subprocess.PIPE, stderr=log,
            timeout=load.duration_s + load.timeout_s + 120, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode != 0:
        raise RuntimeError(f"load generator exited {out.returncode}: {log_path.read_text(errors='replace')[-400:]}")
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    answered, by_model = await _answered(target.answer_backends)
    result.update(backend_answered=answered, by_model=by_model,
                  unanswered_ok=max(0, result["ok"] - answered), load_avg_1m=os.getloadavg()[0],
                  steal_s=stolen.seconds)
    return result


def targets_for(backends, nginx_split: str) -> list[PyTarget]:
    split = (backends.champion, backends.challenger)
    rows = []
    for transport in TRANSPORTS:
        direct = f"py {transport}: direct"
        rows += [
            PyTarget(direct, "direct", transport, backends.champion, "linear-a", (backends.champion,), ""),
            PyTarget(f"py {transport}: nginx split 90/10", "direct", transport, nginx_split, "dep_split", split, direct),
            PyTarget(f"py {transport}: proxyless split 90/10", "proxyless", transport, "", "dep_split", split, direct),
        ]
    return rows


def _row_ratios(rows: dict[str, dict], transport: str) -> None:
    direct = rows[f"py {transport}: direct"].get("median")
    nginx = rows[f"py {transport}: nginx split 90/10"].get("median")
    for name, row in rows.items():
        m = row.get("median")
        if not m or not name.startswith(f"py {transport}:"):
            continue
        row["ratios"] = {
            "req_vs_nginx": ratio(m["req_per_s"], nginx and nginx["req_per_s"]),
            "req_vs_direct": ratio(m["req_per_s"], direct and direct["req_per_s"]),
            "p50_vs_nginx": ratio(m["p50_ms"], nginx and nginx["p50_ms"]),
            "p99_vs_nginx": ratio(m["p99_ms"], nginx and nginx["p99_ms"]),
        }
        if m.get("cpu_us_per_req") is not None:
            row["note"] = f"client CPU {m['cpu_us_per_req']:.0f} us/req; ratios vs py {transport} rows"


async def phase(run) -> None:
    """The proxyless rows and targets, added to a bench.harness Run (its etcd, backends and
    seeded /bench deployments; an nginx split of its own)."""
    from bench.harness import PREFIX, _failure
    from bench.nginx import NginxUpstream

    s, b = run.s, run.backends
    nginx = run.nginx("px-split", (NginxUpstream("champion", b.champion, 9000),
                                   NginxUpstream("challenger", b.challenger, 1000)))
    load = PyLoad(concurrency=s.load.clients * s.load.streams, duration_s=s.load.duration_s,
                  warmup_requests=min(s.warmup_requests, 1000))
    repeats = s.repeats
    targets = targets_for(b, nginx)
    rows = {t.row: {"name": t.row, "kind": "saturating", "status": "ok", "load": load.describe(),
                    "address": t.address or f"in-process, etcd {PREFIX}", "model_name": t.model_name, "runs": []}
            for t in targets}
    for rep in range(repeats):
        for t in targets:
            row = rows[t.row]
            if row["status"] != "ok":
                continue
            try:
                result = await run_once(t, load, run.work, run.member.endpoint, PREFIX)
            except Exception as err:  # noqa: BLE001 - a broken row is reported, the run goes on
                row["status"] = _failure(err)
                continue
            row["runs"].append(result)
            print(f"[bench {time.strftime('%H:%M:%S')}] {t.row:<40} rep {rep + 1}: {result['req_per_s']:8.0f} req/s  "
                  f"p50 {result['p50_ms'] or 0:6.2f} ms  p99 {result['p99_ms'] or 0:6.2f} ms  "
                  f"errors {result['errors']}  client CPU {result['cpu_us_per_req'] or 0:.0f} us/req", flush=True)
    for row in rows.values():
        runs = row["runs"]
        if runs:
            row["median"] = {k: median_or_none([r[k] for r in runs])
                             for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_req")}
            row["errors"] = sum(r["errors"] + r["unanswered_ok"] for r in runs)
            row["mirrored"] = 0
    for transport in TRANSPORTS:
        _row_ratios(rows, transport)
    run.rows.extend(rows.values())
    _targets(run, rows)


def _targets(run, rows: dict[str, dict]) -> None:
    for against, bound in TARGET_BOUNDS.items():
        measured, verdicts = [], []
        for transport in TRANSPORTS:
            r = rows[f"py {transport}: proxyless split 90/10"].get("ratios") or {}
            q = r.get(f"req_vs_{against}")
            if q is None:
                measured.append(f"{transport} n/a")
                verdicts.append(None)
            else:
                measured.append(f"{transport} {q:.2f}x")
                verdicts.append(q >= bound)
        ok = None if None in verdicts else all(verdicts)
        what = "a direct call" if against == "direct" else "nginx's split"
        run.target(f"7 proxyless vs {against}", ", ".join(measured),
                   f">= {bound:.1f}x {what} req/s (same Python client)", ok)
    for transport in TRANSPORTS:
        row = rows[f"py {transport}: proxyless split 90/10"]
        trials = [(r["by_model"].get("linear-b", 0), r["by_model"].get("linear-a", 0) + r["by_model"].get("linear-b", 0))
                  for r in row["runs"]]
        trials = [(b, n) for b, n in trials if n]
        if trials:
            within = sum(within_binomial_bound(b, n, 0.1) for b, n in trials)
            row["note"] = f"{row.get('note', '')}; 90/10 split within the binomial bound in {within}/{len(trials)} runs"

if __name__ == "__main__":
    raise SystemExit(main())
