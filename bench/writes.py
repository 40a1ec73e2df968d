"""Target 4: PATCH rate through the REST gateway with 16 concurrent clients, and lost updates.

Each client owns one challenger and flips its traffic_pct between 1 and 2, so every request
changes something (no no-op answers) and 16 challengers stay under the 50 % cap. Two
shapes: all 16 challengers on one deployment (every write races the others for the same
etcd key, the case "no lost update" is about) and one deployment per client (no races: the
gateway and control plane's own cost). Nothing is lost when each deployment's final
cache_version is its first plus its number of 200s and every challenger holds the value its
client last wrote."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from bench import patch_writers, rest

Slot = tuple[str, str]  # (deployment slug, challenger id) one client writes


async def setup(client: httpx.AsyncClient, endpoint: str, writers: int, shared: bool) -> list[Slot]:
    champion = await rest.register_model(client, endpoint, "linear-a")
    slots = []
    slug = await rest.create_deployment(client, champion) if shared else ""
    for i in range(writers):
        if not shared:
            slug = await rest.create_deployment(client, champion)
        model = await rest.register_model(client, endpoint, f"writer-{i}")
        answer = await rest.patch_traffic(client, slug, {"action": "add_challenger", "model_id": model, "traffic_pct": 1})
        slots.append((slug, answer["challenger"]["id"]))
    return slots


async def _start_writer(plan: patch_writers.WriterPlan) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.patch_writers", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent))
    proc.stdin.write(plan.to_json().encode() + b"\n")
    await proc.stdin.drain()
    return proc


async def _read_line(proc: asyncio.subprocess.Process, what: str, timeout_s: float) -> str:
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    if not line:
        raise RuntimeError(f"writer process {proc.pid} exited (code {await proc.wait()}) before {what}")
    return line.decode()


async def run_writers(base_url: str, headers: dict, slots: list[Slot], duration_s: float, warmup_s: float,
                      processes: int) -> patch_writers.Tally:
    """The slots' clients spread over `processes` processes, started together once every
    client has its connection."""
    plans = [patch_writers.WriterPlan(base_url, headers, group, warmup_s, duration_s)
             for group in patch_writers.split_slots(slots, processes)]
    procs = [await _start_writer(plan) for plan in plans]
    try:
        for proc in procs:
            if (await _read_line(proc, "ready", 30)).strip() != "ready":
                raise RuntimeError(f"writer process {proc.pid} did not get ready")
        for proc in procs:
            proc.stdin.write(b"go\n")
        await asyncio.gather(*(proc.stdin.drain() for proc in procs))
        wait_s = warmup_s + duration_s + 30
        tallies = [patch_writers.Tally.from_json(await _read_line(proc, "its tally", wait_s)) for proc in procs]
        await asyncio.gather(*(proc.wait() for proc in procs))
        return patch_writers.merge(tallies)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def measure(base_url: str, headers: dict, slots: list[Slot], duration_s: float, warmup_s: float = 1.0,
                  processes: int = 4, cpu_pids: dict[str, int] | None = None) -> dict:
    """Every client writes for warmup_s + duration_s; the rate counts the 200s that arrive
    after the warm-up (new connections, first token checks), lost updates count them all.
    The clients run in `processes` processes of bench.patch_writers with lean keep-alive
    connections, so the figure is the server's, not the harness's CPU. With cpu_pids
    ({"gateway": pid, ...}) the row also gives each process's CPU per PATCH served, the
    figure that load on a shared machine moves least."""
    slugs = sorted({slug for slug, _ in slots})
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        start_versions = {s: (await rest.get_deployment(client, s))["cache_version"] for s in slugs}
    cpu_before = {who: process_cpu_s(pid) for who, pid in (cpu_pids or {}).items()}
    tally = await run_writers(base_url, headers, slots, duration_s, warmup_s, processes)
    cpu_after = {who: process_cpu_s(pid) for who, pid in (cpu_pids or {}).items()}
    last_written = {slot: tally.last_written.get(slot[1], 1) for slot in slots}
    lost = wrong = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15) as client:
        for slug in slugs:
            final = await rest.get_deployment(client, slug)
            lost += start_versions[slug] + tally.ok_by_slug[slug] - final["cache_version"]
            final_pct = {c["id"]: c["traffic_pct"] for c in final["challengers"]}
            wrong += sum(1 for (s, ch), pct in last_written.items() if s == slug and final_pct.get(ch) != pct)
    ok = sum(tally.ok_by_slug.values())
    attempts = ok + sum(tally.failures.values())
    elapsed = tally.elapsed_s
    cpu = {"server_cpu_us_per_patch": cpu_us_per_patch(cpu_before, cpu_after, attempts)} if cpu_pids else {}
    return {**cpu, "writers": len(slots), "deployments": len(slugs), "processes": min(processes, len(slots)),
            "seconds": round(elapsed, 3), "ok": ok, "ok_timed": tally.ok_timed, "failed": sum(tally.failures.values()),
            "failures": dict(tally.failures), "patch_per_s": tally.ok_timed / elapsed if elapsed > 0 else 0.0,
            "client_cpu_us_per_patch": round(tally.cpu_s / attempts * 1e6, 1) if attempts else None,
            "lost_updates": lost, "challengers_not_last_written": wrong, "latencies_ms": tally.latencies_ms}


# --- python -m bench.writes: the row alone, with each process's CPU per PATCH -------------

def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    import os
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_us_per_patch(before: dict[str, float], after: dict[str, float], patches: int) -> dict[str, float | None]:
    """Each process's CPU between the two snapshots, divided by the PATCHes served."""
    return {name: round((after[name] - before[name]) / patches * 1e6, 1) if patches else None for name in before}


async def _profiled_run(args) -> dict:
    import contextlib
    import subprocess
    import tempfile

    from bench import etcd_rows, stack
    from tsplit.etcd import Etcd
    from tsplit.etcd_server import EtcdMember

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tsplit-writes-") as tmp, contextlib.ExitStack() as stops:
        work = Path(tmp)
        member = EtcdMember(data_dir=work / "etcd", log_path=work / "etcd.log").start()
        stops.callback(member.stop)
        etcd = Etcd([member.endpoint])
        try:
            etcd_cpu = process_cpu_s(member.process.pid)
            txn = await etcd_rows.txn_rate(etcd, "/writes-etcd/txn/", args.writers, args.txn_seconds)
            etcd_cpu = process_cpu_s(member.process.pid) - etcd_cpu
        finally:
            await etcd.close()
        results["etcd_txn_per_s"] = round(txn["txn_per_s"], 1)
        results["etcd_cpu_us_per_txn"] = round(etcd_cpu / max(1, txn["committed"]) * 1e6, 1)
        control = stack.start_control_stack(work, member.endpoint, "/writes", "org_bench")
        stops.callback(control.stop)
        pids = {"gateway": control.gateway.pid, "controlplane": control.controlplane.pid,
                "etcd": member.process.pid}
        for shared in (True, False):
            name = "one deployment" if shared else "own deployments"
            async with httpx.AsyncClient(base_url=control.gateway_url, headers=control.headers, timeout=15) as client:
                slots = await setup(client, "127.0.0.1:1", args.writers, shared)
            spies = []
            if args.py_spy and shared == (args.py_spy_shape == "one"):
                for who in ("gateway", "controlplane"):
                    out = Path(args.py_spy) / f"{who}.txt"
                    spies.append(subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--format", "raw",
                         "-r", "200", "-d", str(int(args.seconds + 1)), "-p", str(pids[who]), "-o", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            result = await measure(control.gateway_url, control.headers, slots, args.seconds, cpu_pids=pids)
            for spy in spies:
                spy.wait(timeout=60)
            latencies = sorted(result.pop("latencies_ms"))
            result["p50_ms"] = round(latencies[len(latencies) // 2], 2) if latencies else None
            result["ratio_vs_etcd_txn"] = round(result["patch_per_s"] / txn["txn_per_s"], 3)
            results[name] = result
        log_text = control.controlplane.log_tail(20000)
        results["group_commit_log"] = [line.split(": ", 1)[-1] for line in log_text.splitlines() if "group commit" in line]
        return results


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.writes",
                                description="target 4 alone: etcd txn rate, PATCH rate, CPU per PATCH of each process")
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--txn-seconds", type=float, default=3.0)
    p.add_argument("--py-spy", metavar="DIR", help="record raw py-spy profiles of gateway and control plane here")
    p.add_argument("--py-spy-shape", choices=("one", "own"), default="one",
                   help="profile the row with one deployment or with one per client")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(_profiled_run(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
