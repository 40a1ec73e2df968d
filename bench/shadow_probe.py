"""The shadow rows alone, longer and repeated, with each process's CPU per request: for
finding where the champion's tail comes from with mirrors on (issue 5, target 2).

    flock /tmp/tsplit-bench.lock .venv/bin/python -m bench.shadow_probe --seconds 8 --reps 5 \
        [--side-load] [--switch-interval S] \
        [--py-spy OUT --gil] [--router-arg=--flag ...] [--large-mib 8 [--large-rps 4]] [--out result.json]

One etcd, the champion and the two 50 ms slower backends, one router; then `reps` rounds of
`router shadow off @rate` and `router shadow on` at 600 req/s (h2load -c 4 -m 4 --rps 150),
interleaved (each row goes first in turn), plus the optional rows: a router with the
mirrors on its own event loop (the design before the shadow sender process), routers whose
sender runs at another nice level, and shadow off while h2load sends the slow backends
their share of copies straight (the floor: what the challengers' own work costs the
champion on shared cores), and with --large-mib the shadow row while a second h2load sends
requests of that size to the same deployment (mirrored like the rest; issue 11 target 4:
small calls beside 8 MiB mirrored requests keep p99 <= 100 ms). Per run: p50/p99 and each process's CPU (utime + stime from
/proc) per answered request; per row the medians and the per-round p99 ratio to shadow off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import h2load, loadrows, probe, profile, seed, stack
from bench.frames import infer_request_body, large_request_body
from bench.h2load import LoadSettings
from bench.loadrows import LoadTarget
from bench.procs import Child, descendants, start_backend, wait_for_listen
from bench.stats import median, percentile
from tsplit.etcd import Etcd
from tsplit.etcd_server import EtcdMember, free_port
from tsplit.layout import Layout

PREFIX = "/bench"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, own: bool = False) -> float:
    """utime + stime of pid and its descendants (own: of pid alone), seconds."""
    total = 0.0
    for p in [pid] if own else [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def start_router(work: Path, etcd: str, router_id: str, switch_interval: float | None,
                 extra: list[str]) -> tuple[Child, str]:
    port, metrics = free_port(), free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}", "--etcd", etcd,
            "--etcd-prefix", PREFIX, "--router-id", router_id, *extra]
    if not switch_interval:
        child = Child(f"router {router_id}", [stack.script("tsplit-router"), *args],
                      work / f"router-{router_id}.log").start()
        wait_for_listen(child, port, 30)
        return child, f"127.0.0.1:{port}"
    # A switch interval is set in a wrapper before the router (its Python side) starts: no change to it.
    code = ("import sys\n"
            + (f"sys.setswitchinterval({switch_interval!r})\n" if switch_interval else "")
            + f"from dataplane.server import main\nsys.exit(main({args!r}))\n")
    child = Child(f"router {router_id}", [sys.executable, "-c", code], work / f"router-{router_id}.log").start()
    wait_for_listen(child, port, 30)
    return child, f"127.0.0.1:{port}"


def _large_load(address: str, body: Path, rps: int, seconds: float, work: Path) -> dict:
    """The large requests beside a row: their own h2load (one client, rps a second)."""
    result = h2load.run(f"http://{address}", body, LoadSettings(clients=1, streams=4, rps=rps, duration_s=seconds,
                                                                warmup_s=0, timeout_s=30), work)
    s = result.summary
    return {"large_2xx": s.status_2xx, "large_errors": s.failed + s.errored + s.timeout + s.status_other,
            "large_p99_ms": result.p99_ms}


def _side_load(address: str, model_name: str, work: Path, seconds: float) -> None:
    """What the mirrors cost the slow backends, without mirrors: h2load sends them their
    share (150 req/s each) straight, alongside a shadow-off row."""
    body = work / f"body-{model_name}.bin"
    if not body.exists():
        body.write_bytes(infer_request_body(model_name))
    h2load.run(f"http://{address}", body, LoadSettings(clients=1, streams=16, rps=150, duration_s=seconds,
                                                       warmup_s=0), work)


async def one_run(target: LoadTarget, work: Path, pids: dict[str, int], spy_out: Path | None = None,
                  gil_only: bool = False, side: tuple[str, ...] = (),
                  large: tuple[Path, int] | None = None) -> dict:
    def cpu_now() -> dict[str, float]:
        found = {name: cpu_seconds(pid) for name, pid in pids.items()}
        # The router's own process apart from its children (the shadow sender, if any).
        found["router_own"] = cpu_seconds(pids["router"], own=True)
        return found
    before = cpu_now()
    started = time.monotonic()
    spy = None
    if spy_out is not None:
        spy = profile.start_record(profile.py_spy_binary(), pids["router"], target.load.duration_s, spy_out,
                                   gil_only=gil_only)
    sides = [asyncio.to_thread(_side_load, address, "side", work, target.load.duration_s) for address in side]
    if large is not None:
        sides.append(asyncio.to_thread(_large_load, target.address, *large, target.load.duration_s, work))
    result, *side_results = await asyncio.gather(loadrows.run_once(target, work), *sides)
    large_result = side_results[-1] if large is not None else {}
    if spy is not None:
        spy.wait(30)
    wall = time.monotonic() - started
    answered = max(1, result["backend_answered"])
    cpu = {name: s - before[name] for name, s in cpu_now().items()}
    return {**{k: result[k] for k in ("req_per_s", "p50_ms", "p99_ms", "max_ms", "errors", "mirrored",
                                      "load_avg_1m")},
            "p999_ms": result.get("p999_ms"),
            "cpu_us_per_req": {name: round(1e6 * s / answered, 1) for name, s in cpu.items()},
            "cpu_share": {name: round(s / wall, 3) for name, s in cpu.items()}, **large_result}


async def main_async(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tsplit-shadow-probe-"))
    stoppers: list = []
    try:
        member = EtcdMember(data_dir=work / "etcd", log_path=work / "etcd.log").start()
        stoppers.append(member)
        addresses, pids = [], {}
        for name, delay in (("champion", 0), ("challenger", 0), ("slow1", 50), ("slow2", 50)):
            child, address = start_backend(work, name, delay)
            stoppers.append(child)
            addresses.append(address)
            pids[name] = child.pid
        del pids["challenger"]
        backends = seed.BenchBackends(*addresses)
        async with Etcd(member.endpoint) as etcd:
            layout = Layout(PREFIX)
            await seed.write_models(etcd, layout, seed.bench_models(backends))
            await seed.write_deployments(etcd, layout, seed.bench_deployments())
        router, address = start_router(work, member.endpoint, "probe", args.switch_interval, args.router_arg)
        stoppers.append(router)
        await probe.wait_serving(address, 30)
        rate = LoadSettings(clients=4, streams=4, rps=150, duration_s=args.seconds, warmup_s=0)
        slow = (backends.slow1, backends.slow2)
        off = LoadTarget("off", address, "dep_solo", (backends.champion,), load=rate)
        targets = [(off, router.pid),
                   (LoadTarget("on", address, "dep_shadow", (backends.champion,), slow, load=rate), router.pid)]
        large_row = f"on + {args.large_mib:g} MiB requests"
        if args.large_mib:
            large_body = work / "body-large.bin"
            large_body.write_bytes(large_request_body("dep_shadow", args.large_mib))
            targets.append((LoadTarget(large_row, address, "dep_shadow", (backends.champion,), slow, load=rate),
                            router.pid))
        if args.side_load:
            # The same shadow-off row, but the slow backends busy with their share of copies.
            targets.append((replace(off, row="off + slow backends loaded"), router.pid))
        for t, _ in targets:
            await loadrows.warm_up(t, work, 2000)
        runs: dict[str, list[dict]] = {t.row: [] for t, _ in targets}
        for rep in range(args.reps):
            shift = rep % len(targets)   # each row goes first in turn
            for t, router_pid in targets[shift:] + targets[:shift]:
                spy_out = None
                if args.py_spy and rep == 0:
                    spy_out = args.py_spy.with_name(f"{args.py_spy.stem}-{t.row.replace(' ', '-')}{args.py_spy.suffix}")
                side = slow if t.row == "off + slow backends loaded" else ()
                large = (large_body, args.large_rps) if t.row == large_row and args.large_mib else None
                r = await one_run(t, work, {**pids, "router": router_pid}, spy_out, args.gil, side, large)
                if spy_out is not None and spy_out.exists():
                    top = profile.summarize(spy_out.read_text(), 25)
                    print(json.dumps(top["self"][:15], indent=0), flush=True)
                runs[t.row].append(r)
                print(f"rep {rep + 1} {t.row:>13}: p50 {r['p50_ms']:6.2f} p99 {r['p99_ms']:6.2f} ms  "
                      f"errors {r['errors']}  mirrored {r['mirrored']}  cpu us/req {r['cpu_us_per_req']}  "
                      f"load {r['load_avg_1m']:.2f}"
                      + (f"  large: {r['large_2xx']} ok, {r['large_errors']} errors, p99 {r['large_p99_ms']} ms"
                         if large else ""), flush=True)
        summary: dict = {}
        for row, rs in runs.items():
            summary[row] = {"p50_ms": median([r["p50_ms"] for r in rs]), "p99_ms": median([r["p99_ms"] for r in rs]),
                            "router_cpu_us_per_req": median([r["cpu_us_per_req"]["router"] for r in rs]),
                            "router_own_cpu_us_per_req": median([r["cpu_us_per_req"]["router_own"] for r in rs]),
                            "errors": sum(r["errors"] for r in rs)}
            if row == large_row:
                summary[row].update(large_ok=sum(r["large_2xx"] for r in rs),
                                    large_errors=sum(r["large_errors"] for r in rs))
        for row in runs:
            if row == "off":
                continue
            ratios = [b["p99_ms"] / a["p99_ms"] for a, b in zip(runs["off"], runs[row])]
            summary[row].update(p99_over_off=summary[row]["p99_ms"] / summary["off"]["p99_ms"],
                                p99_ratio_per_round=[round(x, 2) for x in ratios],
                                median_round_ratio=median(ratios))
        return {"settings": {"seconds": args.seconds, "reps": args.reps, "switch_interval": args.switch_interval,
                             "router_args": args.router_arg}, "summary": summary, "runs": runs}
    finally:
        for s in reversed(stoppers):
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--router-arg", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--py-spy", type=Path, default=None, help="record the router in round 1 (raw stacks)")
    parser.add_argument("--gil", action="store_true", help="py-spy: only the thread holding the GIL")
    parser.add_argument("--side-load", action="store_true",
                        help="also shadow off with h2load sending the slow backends their share of copies")
    parser.add_argument("--large-mib", type=float, default=0.0,
                        help="also the shadow row beside requests of this many MiB (mirrored too)")
    parser.add_argument("--large-rps", type=int, default=4, help="large requests a second (--large-mib)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
