"""Soak run: mixed inference and PATCH churn on a `tsplit up` stack for --duration seconds.

It starts a stack (`tsplit up --demo-models --detach`) or uses a running one (--stack DIR),
creates a deployment (champion linear-a, challengers linear-b and linear-c), then runs
concurrent inference callers against every router while a writer changes the traffic
(update_traffic and toggle_shadow, each with an Idempotency-Key, a 503 retried with the
same key). With --etcd-outage S, etcd is frozen (SIGSTOP) for S seconds in the middle.
At the end it reports requests, errors, latency, versions written, versions seen by each
router, the RSS of every process at start and end, and whether any log holds a token or
the private key; it exits 1 when a check fails. Loopback only; every loop is bounded by
--duration (plus a fixed drain time).

    scripts/soak --duration 240 --json soak.json
    scripts/soak --duration 120 --etcd-outage 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from tsplit.inference import grpc_predict_v2_pb2 as pb
from tsplit.inference import grpc_predict_v2_pb2_grpc as pb_grpc

DRAIN_S = 20.0  # after --duration: time for the last writes to resolve and routers to converge


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 180.0
    directory: Path | None = None      # where `tsplit up` puts the stack (default: a temp dir)
    stack: Path | None = None          # use this running stack instead of starting one
    routers: int = 2
    callers_per_router: int = 4
    patch_interval_s: float = 0.25
    etcd_outage_s: float = 0.0
    json_path: Path | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.duration_s <= 24 * 3600:
            raise ValueError("--duration must be from 1 s to 24 h")
        if self.etcd_outage_s < 0 or self.etcd_outage_s >= self.duration_s:
            raise ValueError("--etcd-outage must be shorter than --duration")
        if self.routers < 1 or self.callers_per_router < 1 or self.patch_interval_s <= 0:
            raise ValueError("--routers and --callers-per-router must be >= 1, --patch-interval > 0")


# --- the stack -----------------------------------------------------------------------------

def tsplit_bin() -> str:
    return str(Path(sys.executable).parent / "tsplit")


def start_stack(directory: Path, routers: int) -> dict[str, Any]:
    result = subprocess.run(
        [tsplit_bin(), "up", "--dir", str(directory), "--routers", str(routers), "--demo-models", "--detach"],
        capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise SystemExit(f"tsplit up failed:\n{result.stderr}")
    return json.loads((directory / "stack.json").read_text())


def stop_stack(directory: Path) -> None:
    subprocess.run([tsplit_bin(), "down", "--dir", str(directory)], capture_output=True, timeout=120)


def processes(stack: dict[str, Any]) -> dict[str, int]:
    """name -> pid of every process of the stack."""
    named = {"etcd": stack["etcd"].get("pid"), "controlplane": stack["controlplane"]["pid"],
             "gateway": stack["gateway"]["pid"]}
    named.update({f"router-{i + 1}": r["pid"] for i, r in enumerate(stack["routers"])})
    named.update({f"model-{m['model_name']}": m["pid"] for m in stack.get("demo_models", [])})
    return {name: pid for name, pid in named.items() if pid}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def secrets_in_logs(stack: dict[str, Any], tokens: list[str]) -> list[str]:
    """Log files that contain a token, a token's signature, or a line of the private key."""
    key_lines = [line for line in Path(stack["jwt"]["private_key"]).read_text().splitlines()
                 if line and not line.startswith("-----")]
    needles = [t for t in tokens] + [t.rsplit(".", 1)[-1] for t in tokens] + key_lines
    found = []
    for path in sorted(Path(stack["logs"]).glob("*.log")):
        text = path.read_text(errors="replace")
        if any(needle and needle in text for needle in needles):
            found.append(path.name)
    return found


# --- the load --------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class RouterTally:
    requests: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    errors_in_outage: int = 0
    versions_seen: set = field(default_factory=set)
    latencies_ms: list = field(default_factory=list)


@dataclass
class WriteTally:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    versions: dict = field(default_factory=dict)       # Idempotency-Key -> cache_version
    refused: list = field(default_factory=list)        # keys answered 4xx: a bug of the churn or the API
    unresolved: list = field(default_factory=list)     # keys still 503 when the drain time ran out
    latencies_ms: dict = field(default_factory=lambda: defaultdict(list))  # status -> answer times


def infer_request(slug: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=slug)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(struct.pack("<2f", 0.3, 0.7))
    return request


class Soak:
    def __init__(self, settings: SoakSettings, stack: dict[str, Any]):
        self.settings, self.stack = settings, stack
        self.token = stack["jwt"]["admin_token"]
        self.http = httpx.AsyncClient(base_url=stack["gateway"]["url"], timeout=30,
                                      headers={"authorization": f"Bearer {self.token}"})
        self.routers = {r["address"]: RouterTally() for r in stack["routers"]}
        self.writes = WriteTally()
        self.outage: tuple[float, float] | None = None   # loop times

    async def create_deployment(self) -> tuple[str, list[str]]:
        models = {m["model_name"]: m["model_id"] for m in self.stack["demo_models"]}
        r = await self.http.post("/v1/deployments", json={"champion_model_id": models["linear-a"]})
        r.raise_for_status()
        slug = r.json()["deployment_id"]
        challengers = []
        for name, pct in (("linear-b", 10), ("linear-c", 5)):
            r = await self.http.patch(f"/v1/deployments/{slug}/traffic",
                                      json={"action": "add_challenger", "model_id": models[name], "traffic_pct": pct})
            r.raise_for_status()
            challengers.append(r.json()["challenger"]["id"])
        return slug, challengers

    async def caller(self, address: str, slug: str, until: float) -> None:
        loop = asyncio.get_running_loop()
        tally = self.routers[address]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = infer_request(slug)
            for _ in range(10_000_000):
                if loop.time() >= until:
                    return
                started = loop.time()
                call = stub.ModelInfer(request, timeout=5)
                try:
                    await call
                    metadata = dict(await call.initial_metadata())
                except grpc.aio.AioRpcError as err:
                    tally.errors[err.code().name] += 1
                    if self.outage and self.outage[0] <= started <= self.outage[1]:
                        tally.errors_in_outage += 1
                    await asyncio.sleep(0.05)
                else:
                    tally.ok += 1
                    tally.versions_seen.add(int(metadata["tsplit-cache-version"]))
                    tally.latencies_ms.append((loop.time() - started) * 1000)
                tally.requests += 1

    def churn_body(self, index: int, challengers: list[str]) -> dict:
        if index % 3 == 2:
            return {"action": "toggle_shadow", "shadow_mode": index % 2 == 0}
        return {"action": "update_traffic", "challenger_id": challengers[index % 2],
                "traffic_pct": round(1 + (index * 7 % 2000) / 100, 2)}

    async def writer(self, slug: str, challengers: list[str], until: float) -> None:
        loop = asyncio.get_running_loop()
        run = uuid.uuid4().hex[:8]
        for index in range(10_000_000):
            if loop.time() >= until:
                return
            key, body = f"soak-{run}-{index}", self.churn_body(index, challengers)
            for attempt in range(1000):
                self.writes.sent += 1
                sent = loop.time()
                try:
                    r = await self.http.patch(f"/v1/deployments/{slug}/traffic", json=body,
                                              headers={"Idempotency-Key": key})
                    status, data = r.status_code, r.json()
                except httpx.HTTPError as err:
                    status, data = 0, {"error": type(err).__name__}
                self.writes.statuses[f"{status} {data.get('error') or 'ok'}"] += 1
                self.writes.latencies_ms[status].append((loop.time() - sent) * 1000)
                if status == 200:
                    self.writes.versions[key] = data["cache_version"]
                    break
                if status not in (0, 503):
                    self.writes.refused.append(key)
                    break
                if loop.time() >= until + DRAIN_S / 2:
                    self.writes.unresolved.append(key)
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(self.settings.patch_interval_s)

    async def freeze_etcd(self, at: float) -> None:
        pid = self.stack["etcd"].get("pid")
        if not pid or not self.settings.etcd_outage_s:
            return
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, at - loop.time()))
        os.kill(pid, signal.SIGSTOP)
        self.outage = (loop.time(), loop.time() + self.settings.etcd_outage_s)
        try:
            await asyncio.sleep(self.settings.etcd_outage_s)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def converge(self, slug: str) -> dict[str, Any]:
        """Wait (bounded) until every router's record shows the final version."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while True:
            current = (await self.http.get(f"/v1/deployments/{slug}")).json()["cache_version"]
            status = (await self.http.get(f"/v1/deployments/{slug}/status")).json()
            applied = {r["address"]: r.get("applied_cache_version") for r in status.get("routers", [])}
            if all(applied.get(a) == current for a in self.routers) or loop.time() > deadline:
                history = (await self.http.get(f"/v1/deployments/{slug}/history")).json()["versions"]
                return {"final_version": current, "applied": applied, "history": history}
            await asyncio.sleep(0.2)

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        slug, challengers = await self.create_deployment()
        pids = processes(self.stack)
        rss_start = {name: rss_mib(pid) for name, pid in pids.items()}
        started = loop.time()
        until = started + self.settings.duration_s
        tasks = [self.caller(a, slug, until) for a in self.routers for _ in range(self.settings.callers_per_router)]
        tasks += [self.writer(slug, challengers, until),
                  self.freeze_etcd(started + (self.settings.duration_s - self.settings.etcd_outage_s) / 2)]
        await asyncio.gather(*tasks)
        elapsed = loop.time() - started
        end = await self.converge(slug)
        rss_end = {name: rss_mib(pid) for name, pid in pids.items()}
        await self.http.aclose()
        return build_report(self.settings, slug, elapsed, self.routers, self.writes, end, rss_start, rss_end,
                            secrets_in_logs(self.stack, [self.token]))


def build_report(settings: SoakSettings, slug: str, elapsed: float, routers: dict[str, RouterTally],
                 writes: WriteTally, end: dict[str, Any], rss_start: dict, rss_end: dict,
                 leaky_logs: list[str]) -> dict[str, Any]:
    history = end["history"]
    ours = {e["request_id"]: e["cache_version"] for e in history if e.get("request_id", "").startswith("soak-")}
    answered = sorted(writes.versions.values())
    checks = {
        "no_inference_errors": all(sum(t.errors.values()) == 0 for t in routers.values()),
        "no_write_refused": not writes.refused,
        "versions_contiguous": [e["cache_version"] for e in history] == list(range(1, len(history) + 1)),
        "no_version_answered_twice": len(set(answered)) == len(answered),
        "every_answer_in_history": all(ours.get(k) == v for k, v in writes.versions.items()),
        "nothing_applied_unanswered": set(ours) <= set(writes.versions) | set(writes.unresolved),
        "routers_converged": all(end["applied"].get(a) == end["final_version"] for a in routers),
        "no_secret_in_logs": not leaky_logs,
    }
    return {
        "duration_s": round(elapsed, 1),
        "etcd_outage_s": settings.etcd_outage_s,
        "deployment": slug,
        "inference": {
            address: {
                "requests": t.requests, "ok": t.ok, "errors": dict(t.errors),
                "errors_during_etcd_outage": t.errors_in_outage,
                "rps": round(t.requests / elapsed, 1),
                "p50_ms": round(percentile(t.latencies_ms, 0.5) or 0, 2),
                "p99_ms": round(percentile(t.latencies_ms, 0.99) or 0, 2),
                "versions_seen": len(t.versions_seen),
                "last_version_seen": max(t.versions_seen) if t.versions_seen else None,
                "applied_at_end": end["applied"].get(address),
            } for address, t in routers.items()},
        "writes": {"requests": writes.sent, "answers": dict(writes.statuses), "versions_written": len(writes.versions),
                   "refused": len(writes.refused), "unresolved": len(writes.unresolved),
                   "final_version": end["final_version"],
                   "latency_ms": {str(status): {"p50": round(percentile(times, 0.5), 1),
                                                "max": round(max(times), 1)}
                                  for status, times in sorted(writes.latencies_ms.items())}},
        "rss_mib": {name: {"start": rss_start[name], "end": rss_end.get(name)} for name in rss_start},
        "logs_with_secrets": leaky_logs,
        "checks": checks,
        "ok": all(checks.values()),
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"soak {report['duration_s']} s on {report['deployment']}"
             + (f" (etcd frozen {report['etcd_outage_s']:g} s)" if report["etcd_outage_s"] else "")]
    for address, r in report["inference"].items():
        lines.append(f"  router {address}: {r['requests']} requests ({r['rps']}/s), {r['ok']} ok, errors "
                     f"{r['errors'] or 0}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['versions_seen']} "
                     f"versions seen, last {r['last_version_seen']}, applied at end {r['applied_at_end']}")
    w = report["writes"]
    lines.append(f"  writes: {w['requests']} requests, answers {w['answers']}, {w['versions_written']} versions "
                 f"written, final version {w['final_version']}, refused {w['refused']}, unresolved {w['unresolved']}, "
                 f"answer time by status {w['latency_ms']}")
    for name, rss in report["rss_mib"].items():
        lines.append(f"  rss {name}: {rss['start']} -> {rss['end']} MiB")
    lines.append(f"  logs holding a secret: {report['logs_with_secrets'] or 'none'}")
    lines += [f"  check {name}: {'ok' if ok else 'FAILED'}" for name, ok in report["checks"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> SoakSettings:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--dir", type=Path, help="directory for the stack `tsplit up` starts (default: a temp dir)")
    p.add_argument("--stack", type=Path, help="use the stack already running from this directory")
    p.add_argument("--routers", type=int, default=2, help="routers in the started stack (default 2)")
    p.add_argument("--callers-per-router", type=int, default=4, help="concurrent inference callers per router")
    p.add_argument("--patch-interval", type=float, default=0.25, help="seconds between PATCHes (default 0.25)")
    p.add_argument("--etcd-outage", type=float, default=0.0, help="freeze etcd this many seconds mid-run")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--keep", action="store_true", help="leave the started stack running")
    args = p.parse_args(argv)
    try:
        return SoakSettings(args.duration, args.dir, args.stack, args.routers, args.callers_per_router,
                            args.patch_interval, args.etcd_outage, args.json, args.keep)
    except ValueError as err:
        p.error(str(err))


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    started_here = settings.stack is None
    directory = settings.stack or settings.directory or Path(tempfile.mkdtemp(prefix="tsplit-soak."))
    stack = start_stack(directory, settings.routers) if started_here else json.loads((directory / "stack.json").read_text())
    try:
        report = asyncio.run(Soak(settings, stack).run())
    finally:
        if started_here and not settings.keep:
            stop_stack(directory)
    print(render(report))
    if settings.json_path:
        settings.json_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
