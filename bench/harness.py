"""scripts/bench: run every row, print the tables, write bench-results/<timestamp>.json.

Rows whose part is not built yet are reported as "n/a (not built)"; a row that fails is
reported with its error and the run goes on with the next phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import httpx

from bench import etcd_rows, guardrails_sim, loadrows, native_rows, pinning, probe, procs, profile, propagation, proxyless, report, seed, stack, writes
from bench.loadrows import LoadTarget
from bench.nginx import NginxProcess, NginxSettings, NginxUpstream
from bench.procs import rss_bytes, start_backend, start_refproxy, tree_cpu_seconds
from bench.settings import PHASES, BenchSettings, quick_settings
from bench.stats import median_or_none, percentile, ratio, within_binomial_bound, binomial_bound
from tsplit.etcd import Etcd
from tsplit.etcd_server import EtcdMember, find_etcd_binary, free_port
from tsplit.layout import Layout
from tsplit.resources import BASIS_POINTS, Challenger, Deployment

NOT_BUILT = "n/a (not built)"
PREFIX = "/bench"
SCALE_PREFIX = "/bench-scale"
DIRECT_OWN_CORE = "direct, backends on 1 core"
NGINX_OWN_CORE = "nginx split 90/10, own core"
ROUTER_OWN_CORE = "router split 90/10, own core"
SHADOW_OFF_OWN_CORE = "router shadow off, own core @rate"
SHADOW_ON_OWN_CORE = "router shadow on x2 (25%+25%), own core @rate"
LOAD_KINDS = ("saturating", "fixed rate", "one stream", "python client")
PROXYLESS_MODULE = "dataplane.proxyless"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _p(values: list[float], pct: float) -> float | None:
    return percentile(values, pct) if values else None


def _failure(err: BaseException) -> str:
    return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


class Run:
    """One benchmark run: its processes, its results."""

    def __init__(self, settings: BenchSettings, work_dir: Path):
        self.s = settings
        self.work = work_dir
        self.stoppers: list = []  # things with .stop(), stopped in reverse order
        self.rows: list[dict] = []
        self.targets: list[dict] = []
        self.etcd_info: dict = {}
        self.etcd: Etcd | None = None
        self.member: EtcdMember | None = None
        self.backends: seed.BenchBackends | None = None
        self.backend_pids: list[int] = []
        self.proxy_pids: dict[str, int] = {}  # address -> pid of the nginx or router serving it

    # -- setup ---------------------------------------------------------------------------------
    def start_etcd(self) -> None:
        self.member = EtcdMember(data_dir=self.work / "etcd", log_path=self.work / "etcd.log").start()
        self.stoppers.append(self.member)
        self.etcd_info = {"version": report._version([find_etcd_binary(), "--version"], r"etcd Version: (\S+)"),
                          "data_dir": str(self.member.data_dir), "disk": _disk_of(self.member.data_dir),
                          "fsync": "as is (etcd defaults, no --unsafe-no-fsync)", "members": 1}

    def start_backends(self) -> None:
        addresses, http = [], []
        for name, delay in (("champion", 0), ("challenger", 0), ("slow1", 50), ("slow2", 50)):
            child, address = start_backend(self.work, name, delay)
            self.stoppers.append(child)
            self.backend_pids.append(child.pid)
            addresses.append(address)
            http.append(child.http_address)
        self.backends = seed.BenchBackends(*addresses, champion_http=http[0], challenger_http=http[1])
        log(f"backends: {self.backends}")

    async def seed(self) -> None:
        layout = Layout(PREFIX)
        await seed.write_models(self.etcd, layout, seed.bench_models(self.backends))
        await seed.write_deployments(self.etcd, layout, seed.bench_deployments())

    def nginx(self, name: str, upstreams: tuple[NginxUpstream, ...], mirrors: tuple[str, ...] = (),
              **settings) -> str:
        port = free_port()
        proc = NginxProcess(NginxSettings(f"127.0.0.1:{port}", upstreams, self.work / f"nginx-{name}",
                                          mirrors=mirrors, **settings)).start()
        self.stoppers.append(proc)
        from tsplit.etcd_server import wait_for_port
        if not wait_for_port("127.0.0.1", port, 10):
            raise RuntimeError(f"nginx {name} did not listen")
        self.proxy_pids[f"127.0.0.1:{port}"] = proc.process.pid
        return f"127.0.0.1:{port}"

    async def router(self, router_id: str, prefix: str = PREFIX, workers: int = 0,
                     extra: tuple[str, ...] = ()) -> stack.RouterProcess:
        router = stack.start_router(self.work, self.member.endpoint, prefix, router_id, workers, extra=extra)
        self.stoppers.append(router.child)
        self.proxy_pids[router.address] = router.child.pid
        await probe.wait_serving(router.address, 30)
        return router

    # -- phases --------------------------------------------------------------------------------
    async def phase_etcd(self) -> None:
        watch = await etcd_rows.put_to_watch(self.etcd, f"{PREFIX}-etcd/watch/", self.s.etcd_watch_puts)
        txn = await etcd_rows.txn_rate(self.etcd, f"{PREFIX}-etcd/txn/", self.s.writers, self.s.txn_seconds)
        self.etcd_info.update({
            "put_p50_ms": _p(watch.put_ms, 50), "put_p99_ms": _p(watch.put_ms, 99),
            "put_to_watch_p50_ms": _p(watch.put_to_event_ms, 50), "put_to_watch_p99_ms": _p(watch.put_to_event_ms, 99),
            "ack_to_watch_p99_ms": _p(watch.ack_to_event_ms, 99), "puts": len(watch.put_ms),
            "txn": txn,
        })
        log(f"etcd: put p99 {self.etcd_info['put_p99_ms']:.2f} ms, put-to-watch p99 "
            f"{self.etcd_info['put_to_watch_p99_ms']:.2f} ms, txn {txn['txn_per_s']:.0f}/s with {txn['writers']} writers")

    async def phase_load(self) -> None:
        b = self.backends
        sat, rate = self.s.load, self.s.rate_load
        split = (NginxUpstream("champion", b.champion, 9000), NginxUpstream("challenger", b.challenger, 1000))
        targets: list[LoadTarget | dict] = [
            LoadTarget("direct", b.champion, "linear-a", (b.champion,), load=sat),
            LoadTarget("nginx split 90/10", self.nginx("split", split), "dep_split", (b.champion, b.challenger), load=sat),
        ]
        rate_targets: list[LoadTarget | dict] = [
            LoadTarget("nginx solo @rate", self.nginx("solo", (NginxUpstream("champion", b.champion, BASIS_POINTS),)),
                       "dep_solo", (b.champion,), load=rate),
            LoadTarget("nginx mirror x2 (100%) @rate", self.nginx(
                "mirror", (NginxUpstream("champion", b.champion, BASIS_POINTS),), mirrors=(b.slow1, b.slow2)),
                "dep_shadow", (b.champion,), (b.slow1, b.slow2), load=rate),
        ]
        for mode in ("aio", "sync"):
            child, address = start_refproxy(self.work, mode, b.champion)
            self.stoppers.append(child)
            targets.append(LoadTarget(f"ref: bare python {mode} proxy (no routing)", address, "linear-a",
                                      (b.champion,), load=sat))
        if stack.built(stack.ROUTER_MODULE):
            r1 = await self.router("bench-r1")
            targets.append(LoadTarget("router split 90/10", r1.address, "dep_split", (b.champion, b.challenger), load=sat))
            if stack.router_supports_workers():
                r2 = await self.router("bench-w2", workers=2)
                targets.append(LoadTarget("router split 90/10 --workers 2", r2.address, "dep_split",
                                          (b.champion, b.challenger), load=sat))
            else:
                targets.append({"name": "router split 90/10 --workers 2", "status": "n/a (no --workers)"})
            if pinning.available():
                # The same backends, nginx and router again, each proxy alone on one CPU and its
                # load and backends on the others (see bench/pinning.py).
                nginx_split = targets[1].address
                targets += [
                    LoadTarget(DIRECT_OWN_CORE, b.champion, "linear-a", (b.champion,), load=sat, isolated=True),
                    LoadTarget(NGINX_OWN_CORE, nginx_split, "dep_split", (b.champion, b.challenger), load=sat,
                               isolated=True),
                    LoadTarget(ROUTER_OWN_CORE, r1.address, "dep_split", (b.champion, b.challenger), load=sat,
                               isolated=True),
                ]
            rate_targets += [
                LoadTarget("router shadow off @rate", r1.address, "dep_solo", (b.champion,), load=rate),
                # Shadow off with the slow backends sent their share of copies by h2load: what
                # the challengers' own work costs the champion on the shared cores.
                LoadTarget("router shadow off, slow backends loaded @rate", r1.address, "dep_solo", (b.champion,),
                           load=rate, side_backends=(b.slow1, b.slow2)),
                LoadTarget("router shadow on x2 (25%+25%) @rate", r1.address, "dep_shadow", (b.champion,),
                           (b.slow1, b.slow2), load=rate),
            ]
            if pinning.available():
                # The router (its shadow sender included: a child of the router) alone on one
                # CPU, the backends (the slow challengers too) and h2load on the other.
                rate_targets += [
                    LoadTarget(SHADOW_OFF_OWN_CORE, r1.address, "dep_solo", (b.champion,), load=rate, isolated=True),
                    LoadTarget(SHADOW_ON_OWN_CORE, r1.address, "dep_shadow", (b.champion,), (b.slow1, b.slow2),
                               load=rate, isolated=True),
                ]
        else:
            targets += [{"name": "router split 90/10", "status": NOT_BUILT},
                        {"name": "router split 90/10 --workers 2", "status": NOT_BUILT}]
            rate_targets += [{"name": "router shadow off @rate", "status": NOT_BUILT},
                             {"name": "router shadow on x2 (25%+25%) @rate", "status": NOT_BUILT}]
        one = self.s.single_load
        single_targets: list[LoadTarget | dict] = [
            LoadTarget("direct @1 stream", b.champion, "linear-a", (b.champion,), load=one),
            LoadTarget("nginx split 90/10 @1 stream", targets[1].address, "dep_split", (b.champion, b.challenger),
                       load=one),
        ]
        router_row = next((t for t in targets if isinstance(t, LoadTarget) and t.row == "router split 90/10"), None)
        single_targets.append(
            LoadTarget("router split 90/10 @1 stream", router_row.address, "dep_split", (b.champion, b.challenger),
                       load=one) if router_row else {"name": "router split 90/10 @1 stream", "status": NOT_BUILT})
        for group, kind in ((targets, "saturating"), (rate_targets, "fixed rate"), (single_targets, "one stream")):
            rows = await self._run_interleaved(group, kind)
            self.rows.extend(rows)
        self._load_ratios()

    async def _run_interleaved(self, group: list, kind: str) -> list[dict]:
        rows = []
        live = []
        for t in group:
            if isinstance(t, dict):
                rows.append({**t, "kind": kind})
                continue
            row = {"name": t.row, "kind": kind, "status": "ok",
                   "address": t.address, "model_name": t.model_name, "load": t.load.describe(), "runs": []}
            try:
                row["sample"] = (await probe.sample_answers(t.address, t.model_name, 20, headers=t.headers,
                                                           rest=t.rest)).to_json()
                row["isolated"] = t.isolated
                with self._placement(t):
                    await loadrows.warm_up(t, self.work, self.s.warmup_requests)
                live.append((t, row))
            except Exception as err:  # noqa: BLE001 - a broken row is reported, the run goes on
                log(f"{row['name']}: {err}")
                row["status"] = _failure(err)
            rows.append(row)
        for rep in range(self.s.repeats):
            for t, row in live:
                try:
                    pid = self.proxy_pids.get(t.address)
                    cpu_before = tree_cpu_seconds(pid) if pid else None
                    backends_before = sum(tree_cpu_seconds(p) for p in self.backend_pids)
                    with self._placement(t):
                        result = await loadrows.run_once(t, self.work)
                    if pid:  # the proxy's whole process tree, from /proc: CPU per answered request
                        result["cpu_us_per_req"] = ratio((tree_cpu_seconds(pid) - cpu_before) * 1e6,
                                                         result["status_2xx"] or None)
                    # What the backends spent per answer: how a proxy sends the calls changes
                    # what serving them costs (all backends: copies included).
                    result["backend_cpu_us_per_req"] = ratio(
                        (sum(tree_cpu_seconds(p) for p in self.backend_pids) - backends_before) * 1e6,
                        result["status_2xx"] or None)
                    row["runs"].append(result)
                    log(f"{row['name']:<40} rep {rep + 1}: {result['req_per_s']:8.0f} req/s  "
                        f"p50 {result['p50_ms'] or 0:6.2f} ms  p99 {result['p99_ms'] or 0:6.2f} ms  "
                        f"errors {result['errors']}")
                except Exception as err:  # noqa: BLE001
                    log(f"{row['name']}: {err}")
                    row["status"] = _failure(err)
        for _, row in live:
            runs = row["runs"]
            row["median"] = {k: median_or_none([r.get(k) for r in runs])
                             for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_req", "backend_cpu_us_per_req")}
            row["errors"] = sum(r["errors"] for r in runs) + row["sample"]["sent"] - row["sample"]["ok"]
            row["mirrored"] = sum(r["mirrored"] for r in runs)
        return rows

    def _router_target(self, target: str, router: dict | None, nginx: dict | None) -> None:
        bound = ">= 0.6x req/s, latency <= 2x, no errors"
        if not (router and nginx):
            self.target(target, NOT_BUILT, bound, None)
            return
        r = router["ratios"]
        errors = (router.get("errors") or 0) + (nginx.get("errors") or 0)
        # Fast answers that are errors are no answers: any error fails the target.
        ok = r["req_vs_nginx"] >= 0.6 and r["p50_vs_nginx"] <= 2 and r["p99_vs_nginx"] <= 2 and not errors
        self.target(target, f"{r['req_vs_nginx']:.2f}x req/s, p50 {r['p50_vs_nginx']:.2f}x, p99 {r['p99_vs_nginx']:.2f}x"
                    + (f", {errors} errors" if errors else ""), bound, ok)

    def _shadow_target(self, target: str, off: dict | None, on: dict | None) -> None:
        bound = "<= 1.1x shadow off, no errors"
        if not (off and on):
            self.target(target, NOT_BUILT, bound, None)
            return
        q = ratio(on["median"]["p99_ms"], off["median"]["p99_ms"])
        errors = (on.get("errors") or 0) + (off.get("errors") or 0)
        self.target(target, f"{on['median']['p99_ms']:.2f} ms vs {off['median']['p99_ms']:.2f} ms = {q:.2f}x"
                    + (f", {errors} errors" if errors else ""), bound, q <= 1.1 and not errors)

    def _placement(self, t: LoadTarget):
        """Where a row's processes may run: anywhere, or its proxy on a CPU of its own."""
        if not t.isolated:
            return contextlib.nullcontext()
        proxy = [self.proxy_pids[t.address]] if t.address in self.proxy_pids else []
        return pinning.isolated(proxy, self.backend_pids)

    def _row(self, name: str) -> dict | None:
        return next((r for r in self.rows if r["name"] == name and r.get("median")), None)

    def _load_ratios(self) -> None:
        references = {False: (self._row("nginx split 90/10"), self._row("direct")),
                      True: (self._row(NGINX_OWN_CORE), self._row(DIRECT_OWN_CORE))}
        for row in self.rows:
            m = row.get("median")
            if not m or row["kind"] != "saturating":
                continue
            nginx, direct = references[bool(row.get("isolated"))]
            row["ratios"] = {
                "req_vs_nginx": ratio(m["req_per_s"], nginx and nginx["median"]["req_per_s"]),
                "req_vs_direct": ratio(m["req_per_s"], direct and direct["median"]["req_per_s"]),
                "p50_vs_nginx": ratio(m["p50_ms"], nginx and nginx["median"]["p50_ms"]),
                "p99_vs_nginx": ratio(m["p99_ms"], nginx and nginx["median"]["p99_ms"]),
            }
        one_direct = self._row("direct @1 stream")
        for row in self.rows:
            if row["kind"] == "one stream" and row.get("median") and one_direct and row is not one_direct:
                added = row["median"]["p50_ms"] - one_direct["median"]["p50_ms"]
                row["note"] = f"p50 +{added:.2f} ms over direct"
        off, on = self._row("router shadow off @rate"), self._row("router shadow on x2 (25%+25%) @rate")
        ngx_off, ngx_on = self._row("nginx solo @rate"), self._row("nginx mirror x2 (100%) @rate")
        floor = self._row("router shadow off, slow backends loaded @rate")
        own_off, own_on = self._row(SHADOW_OFF_OWN_CORE), self._row(SHADOW_ON_OWN_CORE)
        for a, b in ((off, on), (ngx_off, ngx_on), (off, floor), (own_off, own_on)):
            if a and b:
                b["note"] = f"p99 {ratio(b['median']['p99_ms'], a['median']['p99_ms']):.2f}x of mirrors off"
        self._router_target("1 router vs nginx", self._row("router split 90/10"), self._row("nginx split 90/10"))
        if self._row(NGINX_OWN_CORE):
            self._router_target("1 router vs nginx, each on its own core", self._row(ROUTER_OWN_CORE),
                                self._row(NGINX_OWN_CORE))
        self._shadow_target("2 shadow p99", off, on)
        if own_off:
            self._shadow_target("2 shadow p99, router on its own core", own_off, own_on)

    async def phase_native(self) -> None:
        """The native router beside nginx and a direct call, over gRPC and REST (bench/native_rows.py)."""
        await native_rows.phase(self)

    async def phase_client(self) -> None:
        """The proxyless client beside a direct call and a router, all from one Python load
        generator (bench.pyload, its own process): h2load cannot drive an in-process client."""
        b, threads = self.backends, self.s.client_threads
        runs: list[tuple[str, list[str]]] = [
            ("py client: direct", ["--via", "channel", "--target", b.champion, "--model", "linear-a"])]
        rows = [{"name": "py client: direct", "kind": "python client"}]
        if stack.built(stack.ROUTER_MODULE):
            router = await self.router("bench-pyclient")
            runs.append(("py client: router split 90/10",
                         ["--via", "channel", "--target", router.address, "--model", "dep_split"]))
            rows.append({"name": "py client: router split 90/10", "kind": "python client"})
        else:
            rows.append({"name": "py client: router split 90/10", "kind": "python client", "status": NOT_BUILT})
        if stack.built(PROXYLESS_MODULE):
            runs.append(("py client: proxyless split 90/10",
                         ["--via", "proxyless", "--etcd", self.member.endpoint, "--etcd-prefix", PREFIX,
                          "--model", "dep_split"]))
            rows.append({"name": "py client: proxyless split 90/10", "kind": "python client"})
        else:
            rows.append({"name": "py client: proxyless split 90/10", "kind": "python client", "status": NOT_BUILT})
        by_name = {r["name"]: r for r in rows}
        for name, _ in runs:
            by_name[name].update(status="ok", runs=[], load=f"bench.pyload: {threads} threads, 1 call each in flight, "
                                                          f"{self.s.load.duration_s:g} s after 1 s warm-up")
        # 3 repetitions at most: these rows only place the proxyless client beside the router
        # (the proxyless rows proper follow) and the whole run must stay near 15 minutes.
        for rep in range(min(self.s.repeats, 3)):
            for name, args in runs:
                row = by_name[name]
                cmd = [sys.executable, "-m", "bench.pyload", *args, "--threads", str(threads),
                       "--duration", f"{self.s.load.duration_s:g}"]
                try:
                    with procs.StolenDuring() as stolen:
                        out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                                      timeout=self.s.load.duration_s + 60)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    if "error" in result:
                        raise RuntimeError(result["error"])
                    result["load_avg_1m"] = os.getloadavg()[0]
                    result["steal_s"] = stolen.seconds
                    row["runs"].append(result)
                    log(f"{name:<40} rep {rep + 1}: {result['req_per_s']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                        f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}")
                except Exception as err:  # noqa: BLE001
                    log(f"{name}: {err}")
                    row["status"] = _failure(err)
        direct = by_name["py client: direct"]
        for row in rows:
            if row.get("runs"):
                row["median"] = {k: median_or_none([r[k] for r in row["runs"]]) for k in ("req_per_s", "p50_ms", "p99_ms")}
                row["errors"] = sum(r["errors"] for r in row["runs"])
        for row in rows:
            if row.get("median") and direct.get("median"):
                row["ratios"] = {"req_vs_direct": ratio(row["median"]["req_per_s"], direct["median"]["req_per_s"])}
        self.rows.extend(rows)
        if stack.built(PROXYLESS_MODULE):
            await proxyless.phase(self)  # aio and sync rows against direct and nginx, targets 7

    async def phase_precision(self) -> None:
        name = "split precision 87.65/12.34/0.01"
        if not stack.built(stack.ROUTER_MODULE):
            self.rows.append({"name": name, "kind": "precision", "status": NOT_BUILT})
            self.target("6 split precision", NOT_BUILT, "99.9% binomial bound", None)
            return
        b = self.backends
        router = await self.router("bench-precise")
        load = replace(self.s.load, duration_s=0, requests=self.s.precision_requests)
        t = LoadTarget(name, router.address, "dep_precise", (b.champion, b.challenger), load=load)
        result = await loadrows.run_once(t, self.work)
        router.child.stop()
        counts = result["by_model"]
        total = sum(counts.values())
        shares = {"linear-a": 8765, "precise-1": 1234, "precise-2": 1}
        checks = {}
        for model_name, bp in shares.items():
            observed = counts.get(model_name, 0)
            checks[model_name] = {
                "expected_share": bp / BASIS_POINTS, "observed": observed, "expected": total * bp / BASIS_POINTS,
                "bound": binomial_bound(total, bp / BASIS_POINTS),
                "within": within_binomial_bound(observed, total, bp / BASIS_POINTS)}
        # The 90/10 rows' answers count too: every request of every run is a trial.
        split_checks = []
        for row in self.rows:
            # Every router row of the split (gRPC and REST, load phase and native phase).
            if (row.get("model_name") in ("dep_split", "dep_split_grpc") and "router" in row["name"]
                    and row.get("runs")):
                for run in row["runs"]:
                    n = run["by_model"].get("linear-a", 0) + run["by_model"].get("linear-b", 0)
                    if n:
                        split_checks.append(within_binomial_bound(run["by_model"].get("linear-b", 0), n, 0.1))
        ok = all(c["within"] for c in checks.values()) and all(split_checks)
        self.rows.append({"name": name, "kind": "precision", "status": "ok", "requests": total, "checks": checks,
                          "split_runs_within_bound": f"{sum(split_checks)}/{len(split_checks)}",
                          "errors": result["errors"]})
        measured = ", ".join(f"{k} {v['observed']}/{total} (+-{v['bound']:.0f})" for k, v in checks.items())
        self.target("6 split precision", measured + f"; 90/10 runs {sum(split_checks)}/{len(split_checks)} within",
                    "99.9% binomial bound", ok)

    async def _control(self, prefix: str, name: str) -> stack.ControlStack:
        control = stack.start_control_stack(self.work, self.member.endpoint, prefix, seed.BENCH_ORG, name)
        self.stoppers.append(control)
        return control

    def _control_built(self) -> bool:
        return stack.built(stack.CONTROLPLANE_MODULE) and stack.built(stack.GATEWAY_MODULE)

    async def _propagation(self, control: stack.ControlStack, prefix: str, label: str, changes: int) -> dict:
        routers = [await self.router(f"{label}-p{i}", prefix, extra=propagation.ROUTER_FLAGS) for i in range(4)]
        async with httpx.AsyncClient(base_url=control.gateway_url, headers=control.headers, timeout=15) as client:
            slug, challenger = await propagation.setup_deployment(client, self.backends.champion, self.backends.challenger)
            addresses = [r.address for r in routers]
            patches = await propagation.measure(client, addresses, slug, challenger, changes)
            puts = await propagation.measure_etcd_put(self.etcd, Layout(prefix), addresses, slug, challenger, changes)
            gets = []
            for _ in range(self.s.get_samples):
                sent = time.perf_counter()
                resp = await client.get(f"/v1/deployments/{slug}")
                resp.raise_for_status()
                gets.append((time.perf_counter() - sent) * 1000)
        for r in routers:
            r.child.stop()
        logs = propagation.read_logs([r.child.log_path for r in routers])
        patch, put = propagation.timings(patches, logs), propagation.timings(puts, logs)
        # The target's figure: the routers' logged swaps (see bench/propagation.py); a client's
        # first answer with the new version beside it.
        samples = patch.swapped_ms or patch.answered_ms
        return {"changes": len(patches), "p50_ms": _p(samples, 50), "p99_ms": _p(samples, 99), "max_ms": max(samples),
                "clock": "router swap" if patch.swapped_ms else "client answer",
                "patch": patch.to_json(_p), "get_p50_ms": _p(gets, 50), "get_p99_ms": _p(gets, 99), "routers": 4,
                "etcd_put_to_routers": {"from_put_sent_ms": put.to_json(_p)["router_swapped"],
                                        "client_answered_from_put_sent_ms": put.to_json(_p)["client_answered"],
                                        "contradictions": put.contradictions}}

    async def phase_propagation(self) -> None:
        bound = f"<= etcd put-to-watch p99 + 10 ms"
        if not (self._control_built() and stack.built(stack.ROUTER_MODULE)):
            self.rows.append({"name": "propagation PATCH 200 -> 4 routers", "kind": "propagation", "status": NOT_BUILT})
            self.target("3 propagation", NOT_BUILT, bound, None)
            return
        control = await self._control(PREFIX, "main")
        result = await self._propagation(control, PREFIX, "main", self.s.propagation_changes)
        etcd_p99 = self.etcd_info.get("put_to_watch_p99_ms")
        self.rows.append({"name": "propagation PATCH 200 -> 4 routers", "kind": "propagation", "status": "ok", **result,
                          "etcd_put_to_watch_p99_ms": etcd_p99})
        self.small_get_p99 = result["get_p99_ms"]
        ok = etcd_p99 is not None and result["p99_ms"] <= etcd_p99 + 10
        self.target("3 propagation", f"p99 {result['p99_ms']:.2f} ms (etcd {etcd_p99 or 0:.2f} ms)",
                    bound + f" = {(etcd_p99 or 0) + 10:.2f} ms", ok)

    async def phase_writes(self) -> None:
        bound = ">= 0.3x raw etcd txn rate, 0 lost"
        names = {True: "control-plane PATCH rate, 16 clients, one deployment",
                 False: "control-plane PATCH rate, 16 clients, own deployment each"}
        if not self._control_built():
            for name in names.values():
                self.rows.append({"name": name, "kind": "writes", "status": NOT_BUILT})
            self.target("4 control-plane writes", NOT_BUILT, bound, None)
            return
        control = next((s for s in self.stoppers if isinstance(s, stack.ControlStack)), None) or await self._control(PREFIX, "main")
        # Each repetition measures etcd's own transaction rate right before the PATCH rows, so
        # every ratio compares the two under the same load on the machine. Each row gets fresh
        # deployments: a writer's first PATCH must change its challenger's share, or the no-op
        # (no new version) would count as a lost update.
        reps: dict[bool, list[dict]] = {shared: [] for shared in names}
        for rep in range(self.s.repeats):
            # Routers watching the deployments go on applying the last row's changes (and
            # writing their records) for a moment: etcd is measured once they are done.
            await asyncio.sleep(self.s.write_settle_s)
            txn = (await etcd_rows.txn_rate(self.etcd, f"{PREFIX}-etcd/txn{rep}/", self.s.writers,
                                            self.s.txn_seconds))["txn_per_s"]
            for shared, name in names.items():
                async with httpx.AsyncClient(base_url=control.gateway_url, headers=control.headers, timeout=15) as client:
                    slots = await writes.setup(client, self.backends.champion, self.s.writers, shared)
                result = await writes.measure(control.gateway_url, control.headers, slots, self.s.write_seconds)
                latencies = result.pop("latencies_ms")
                result.update(p50_ms=_p(latencies, 50), p99_ms=_p(latencies, 99), etcd_txn_per_s=txn,
                              ratio_vs_etcd_txn=ratio(result["patch_per_s"], txn))
                reps[shared].append(result)
                log(f"{name} rep {rep + 1}: {result['patch_per_s']:.0f}/s vs etcd {txn:.0f} txn/s "
                    f"= {result['ratio_vs_etcd_txn'] or 0:.2f}x, p50 {result['p50_ms'] or 0:.1f} ms, "
                    f"lost {result['lost_updates']}")
        all_ok = True
        measured = []
        for shared, name in names.items():
            runs = reps[shared]
            row = {"name": name, "kind": "writes", "status": "ok", "repeats": runs, **runs[len(runs) // 2]}
            for key in ("patch_per_s", "etcd_txn_per_s", "ratio_vs_etcd_txn", "p50_ms", "p99_ms"):
                row[key] = median_or_none([r[key] for r in runs])
            for key in ("ok", "lost_updates", "challengers_not_last_written", "failed"):
                row[key] = sum(r[key] for r in runs)
            self.rows.append(row)
            q = row["ratio_vs_etcd_txn"]
            all_ok = all_ok and q is not None and q >= 0.3 and row["lost_updates"] == 0 \
                and row["challengers_not_last_written"] == 0
            measured.append(f"{'one dep' if shared else 'own deps'}: {row['patch_per_s']:.0f}/s = {q or 0:.2f}x "
                            f"(median of {len(runs)}), lost {row['lost_updates']}, non-200 {row['failed']}")
        txn_median = median_or_none([r["etcd_txn_per_s"] for r in reps[True]])
        self.target("4 control-plane writes", f"{'; '.join(measured)} (etcd {txn_median or 0:.0f} txn/s)", bound, all_ok)

    async def phase_scale(self) -> None:
        n = self.s.scale_deployments
        name = f"scale: {n:,} deployments"
        bounds = "cold start <= 2 s, RSS <= 200 MB, propagation met, GET p99 unchanged"
        if not stack.built(stack.ROUTER_MODULE):
            self.rows.append({"name": name, "kind": "scale", "status": NOT_BUILT})
            self.target("5 scale", NOT_BUILT, bounds, None)
            return
        layout = Layout(SCALE_PREFIX)
        await seed.write_models(self.etcd, layout, seed.bench_models(self.backends))
        deployments = [
            Deployment(f"dep_s{i:06d}", seed.BENCH_ORG, "mod_champ001",
                       (Challenger(f"ch_s{i:06d}", "mod_chall001", 1000),) if i % 2 else (),
                       False, 1, "2026-01-01T00:00:00Z", "bench")
            for i in range(n)]
        started = time.perf_counter()
        await seed.write_deployments(self.etcd, layout, deployments)
        log(f"scale: wrote {n} deployments in {time.perf_counter() - started:.1f}s")
        cold = []
        for i in range(2 if self.s.quick else 3):
            spawn = time.perf_counter()
            router = stack.start_router(self.work, self.member.endpoint, SCALE_PREFIX, f"scale-cold{i}", wait_listen=False)
            self.stoppers.append(router.child)
            await probe.wait_serving(router.address, 60)
            cold.append(time.perf_counter() - spawn)
            sample = await probe.sample_answers(router.address, f"dep_s{n - 1:06d}", 20)
            rss = rss_bytes(router.child.pid)
            router.child.stop()
        row = {"name": name, "kind": "scale", "status": "ok", "deployments": n,
               "cold_start_s": median_or_none(cold), "cold_start_runs_s": cold, "rss_mb": rss / 1e6,
               "sample_after_start": sample.to_json()}
        ok = row["cold_start_s"] <= 2 and row["rss_mb"] <= 200 and sample.ok == sample.sent
        measured = f"cold start {row['cold_start_s']:.2f} s, RSS {row['rss_mb']:.0f} MB"
        if self._control_built():
            control = await self._control(SCALE_PREFIX, "scale")
            result = await self._propagation(control, SCALE_PREFIX, "scale", self.s.scale_propagation_changes)
            row["propagation"] = result
            etcd_p99 = self.etcd_info.get("put_to_watch_p99_ms") or 0
            small = getattr(self, "small_get_p99", None)
            get_ok = small is not None and result["get_p99_ms"] <= max(1.5 * small, small + 2)
            ok = ok and result["p99_ms"] <= etcd_p99 + 10 and get_ok
            measured += (f", propagation p99 {result['p99_ms']:.2f} ms, GET p99 {result['get_p99_ms']:.2f} ms "
                         f"(vs {small or 0:.2f} ms with few)")
            control.stop()
        else:
            measured += ", control plane n/a (not built)"
        self.rows.append(row)
        self.target("5 scale" + ("" if n >= 10_000 else f" ({n:,} in --quick)"), measured, bounds, ok)

    async def phase_profile(self) -> None:
        name = "profile: py-spy on router split 90/10"
        binary = profile.py_spy_binary()
        if not stack.built(stack.ROUTER_MODULE) or binary is None:
            self.rows.append({"name": name, "kind": "profile",
                              "status": NOT_BUILT if binary else "n/a (py-spy not installed)"})
            return
        b = self.backends
        router = await self.router("bench-prof")
        target = LoadTarget(name, router.address, "dep_split", (b.champion, b.challenger), load=self.s.load)
        await loadrows.warm_up(target, self.work, self.s.warmup_requests)
        row = {"name": name, "kind": "profile", "status": "ok", "load": self.s.load.describe()}
        seconds = max(1, int(self.s.load.duration_s) - 1)
        for gil_only in (False, True):
            key = "gil" if gil_only else "python"
            out = self.work / f"profile-{key}.txt"
            recorder = profile.start_record(binary, router.child.pid, seconds, out, gil_only=gil_only)
            result = await loadrows.run_once(target, self.work)
            _, err = await asyncio.to_thread(recorder.communicate, timeout=self.s.load.duration_s + 30)
            if not out.exists():
                row[key] = {"error": (err or "py-spy wrote nothing").strip()[-300:]}
                continue
            row[key] = {**profile.summarize(out.read_text()), "req_per_s_while_sampling": result["req_per_s"],
                        "seconds": seconds, "rate_hz": 200}
            top = ", ".join(f"{f['frame']} {f['pct']}%" for f in row[key]["self"][:5])
            log(f"profile ({key}): {result['req_per_s']:.0f} req/s while sampling; top self: {top}")
        router.child.stop()
        self.rows.append(row)

    async def phase_guardrails(self) -> None:
        """The guardrail tests' simulation (bench/guardrails_sim.py), no processes: CPU only."""
        settings = guardrails_sim.SimSettings(runs=300, aa_seconds=600) if self.s.quick else guardrails_sim.SimSettings()
        result = await asyncio.to_thread(guardrails_sim.run, settings)
        for row, line in zip(result["rows"], guardrails_sim.summary_lines(result)):
            # "runs" of a harness row lists load runs; the simulation's count goes by another name.
            fields = {("simulated_runs" if k == "runs" else k): v for k, v in row.items()}
            self.rows.append({**fields, "kind": "guardrails", "status": "ok", "summary": line})
            measured = (f"{row['false_alarms']:.4f} ({row['false_alarm_runs']}/{row['runs']} runs)" if "false_alarms" in row
                        else f"{row['detected_within_budget']:.3f} of runs")
            self.target(f"guardrails: {row['name']}", measured, row["target"], row["met"])
        log(f"guardrails simulation: {result['seconds']} s")

    def target(self, name: str, measured: str, bound: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        self.targets.append({"target": name, "measured": measured, "bound": bound, "verdict": verdict})

    def stop(self) -> None:
        for thing in reversed(self.stoppers):
            try:
                thing.stop()
            except Exception:  # noqa: BLE001 - stop everything we can
                pass


def _disk_of(path: Path) -> str:
    best = ("", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[1]):
                best = (f"{device} ({fstype}) mounted at {mount}", mount)
    except OSError:
        pass
    return best[0] or "?"


async def run(settings: BenchSettings) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tsplit-bench-"))
    bench_run = Run(settings, work)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    results: dict = {"started_at": started_at.isoformat(timespec="seconds"), "machine": report.machine(),
                     "versions": report.versions(find_etcd_binary()),
                     "settings": {**asdict(settings), "load": settings.load.describe(),
                                  "rate_load": settings.rate_load.describe(),
                                  "single_load": settings.single_load.describe()},
                     "nginx": {"worker_processes": "2", "upstream_keepalive": 64},
                     "commit": report.commit(),
                     "work_dir": str(work)}
    log(f"work dir {work}")
    try:
        bench_run.start_etcd()
        async with Etcd(bench_run.member.endpoint) as etcd:
            bench_run.etcd = etcd
            bench_run.start_backends()
            await bench_run.seed()
            for phase in PHASES:
                if phase not in settings.phases:
                    continue
                log(f"phase {phase}")
                try:
                    await getattr(bench_run, f"phase_{phase}")()
                except Exception as err:  # noqa: BLE001 - one broken phase must not hide the rest
                    traceback.print_exc()
                    bench_run.rows.append({"name": f"phase {phase}", "kind": phase, "status": _failure(err)})
    finally:
        bench_run.stop()
        if not settings.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    loads = [r["load_avg_1m"] for row in bench_run.rows for r in row.get("runs", ())]
    results["machine"]["load_avg_during_load_rows"] = (
        {"min": min(loads), "median": median_or_none(loads), "max": max(loads)} if loads else None)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    steals = [r["steal_s"] for row in bench_run.rows for r in row.get("runs", ()) if "steal_s" in r]
    results["machine"]["steal_during_load_rows"] = (
        {"total_s": sum(steals), "runs": len(steals), "runs_over_0.1_s": sum(s > 0.1 for s in steals),
         "max_s": max(steals)} if steals else None)
    e = bench_run.etcd_info
    if e.get("put_p99_ms") is not None:
        etcd_text = (f"etcd {e['version']}, {e['members']} member, data dir on {e['disk']}, fsync as is, "
                     f"put p99 {e['put_p99_ms']:.2f} ms")
        for row in bench_run.rows:
            row.setdefault("etcd", etcd_text)  # one etcd serves every row of a run
    results.update(etcd=bench_run.etcd_info, rows=bench_run.rows, targets=bench_run.targets,
                   seconds=round((datetime.datetime.now(datetime.timezone.utc) - started_at).total_seconds(), 1))
    return results


def print_results(results: dict) -> None:
    e = results["etcd"]
    print()
    m = results["machine"]
    busy = m.get("load_avg_during_load_rows")
    busy_text = f"; 1-min load average during the load rows {busy['min']:.1f}..{busy['max']:.1f}" if busy else ""
    steal = m.get("steal_during_load_rows")
    if steal:
        busy_text += (f"; CPU stolen by the hypervisor during them {steal['total_s']:.1f} s in all, over 0.1 s in "
                      f"{steal['runs_over_0.1_s']} of {steal['runs']} runs (max {steal['max_s']:.2f} s)")
    if m.get("sched_autogroup") is not None:
        busy_text += f"; kernel autogroups {'on (CPU shared per process session)' if m['sched_autogroup'] else 'off'}"
    if m.get("process_sessions") == "one":
        busy_text += "; every process in the bench's session (--one-session)"
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB; other processes on the machine are not stopped (see the load averages)"
          f"{busy_text}; medians of {results['settings']['repeats']} interleaved repetitions")
    print(f"versions: {results['versions']}")
    if e.get("put_p99_ms") is not None:
        print(f"etcd {e['version']}, 1 member, data dir on {e['disk']}, fsync as is: put p99 {e['put_p99_ms']:.2f} ms, "
              f"put-to-watch p99 {e['put_to_watch_p99_ms']:.2f} ms, txn {e['txn']['txn_per_s']:.0f}/s")
    load_rows = [r for r in results["rows"] if r.get("kind") in LOAD_KINDS]
    print()
    print(report.load_table(load_rows))
    print()
    print(report.target_table(results["targets"]))
    print()
    print("\n".join(report.detail_lines(results)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description="tsplit benchmarks (issue 5)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 2 minutes)")
    parser.add_argument("--repeats", type=int, help="repetitions of each load row (interleaved)")
    parser.add_argument("--only", help=f"comma-separated phases ({','.join(PHASES)})")
    parser.add_argument("--results-dir", type=Path, default=Path("bench-results"))
    parser.add_argument("--keep-work-dir", action="store_true", help="keep logs and configs of the run")
    parser.add_argument("--one-session", action="store_true",
                        help="start every process in the bench's own session, not each in its own: under kernel "
                             "autogroups, one CPU group shared by threads rather than one group per process")
    args = parser.parse_args(argv)
    procs.use_own_sessions(not args.one_session)
    overrides: dict = {"results_dir": args.results_dir, "keep_work_dir": args.keep_work_dir}
    if args.repeats:
        overrides["repeats"] = args.repeats
    if args.only:
        overrides["phases"] = tuple(p.strip() for p in args.only.split(",") if p.strip())
    try:
        settings = quick_settings(**overrides) if args.quick else replace(BenchSettings(), **overrides)
    except ValueError as err:
        parser.error(str(err))
    results = asyncio.run(run(settings))
    print_results(results)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = report.write_json(results, settings.results_dir, stamp)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
