"""What a run reports: the machine and versions, the table of medians and ratios, the JSON."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

from bench import procs


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg(), "sched_autogroup": sched_autogroup(),
            "process_sessions": "own" if procs.own_sessions() else "one"}


def sched_autogroup() -> bool | None:
    """Whether the kernel groups tasks by session for CPU fairness (None: no such setting).
    Every process the bench starts leads its own session (unless --one-session), so with
    autogroups the kernel shares the cores between the proxy, each backend and etcd, not
    between their threads: a proxy's threads on two cores get half its weight on each."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def _version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        match = re.search(pattern, out.stdout + out.stderr)
        return match.group(1) if match else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


def commit() -> str:
    """The checkout's commit (with "+changes" when its tracked files differ from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")


def versions(etcd_binary: str) -> dict:
    import grpc
    return {
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "h2load": _version(["h2load", "--version"], r"nghttp2/(\S+)"),
        "etcd": _version([etcd_binary, "--version"], r"etcd Version: (\S+)"),
        "grpcio": grpc.__version__,
    }


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def load_table(rows: list[dict]) -> str:
    headers = ["row", "req/s", "p50 ms", "p99 ms", "x nginx req/s", "x direct req/s", "p50/p99 vs nginx",
               "errors", "CPU stolen s", "note"]
    out = []
    for row in rows:
        m = row.get("median") or {}
        r = row.get("ratios") or {}
        lat = "-" if r.get("p50_vs_nginx") is None else f"{r['p50_vs_nginx']:.2f}x / {r['p99_vs_nginx']:.2f}x"
        out.append([row["name"], fmt(m.get("req_per_s"), 0), fmt(m.get("p50_ms"), 2), fmt(m.get("p99_ms"), 2),
                    fmt(r.get("req_vs_nginx"), 2), fmt(r.get("req_vs_direct"), 2), lat,
                    fmt(row.get("errors")), fmt(_stolen(row), 2), row.get("status", "ok") if row.get("status") != "ok" else row.get("note", "")])
    return render_table(headers, out)


def _stolen(row: dict) -> float | None:
    """CPU the hypervisor took during the row's repetitions, all CPUs, seconds (procs.steal_seconds)."""
    steals = [run["steal_s"] for run in row.get("runs", ()) if "steal_s" in run]
    return sum(steals) if steals else None


def target_table(targets: list[dict]) -> str:
    headers = ["target", "measured", "bound", "verdict"]
    return render_table(headers, [[t["target"], t["measured"], t["bound"], t["verdict"]] for t in targets])


def write_json(results: dict, results_dir: Path, stamp: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def detail_lines(results: dict) -> list[str]:
    """One line per non-load row: the figures behind the targets."""
    lines = []
    for row in results.get("rows", []):
        kind, status = row.get("kind"), row.get("status")
        if kind in ("saturating", "fixed rate", "one stream"):
            continue
        if status != "ok":
            lines.append(f"- {row['name']}: {status}")
            continue
        if kind == "propagation":
            raw = row.get("etcd_put_to_routers", {})
            lines.append(
                f"- {row['name']}: {row['changes']} changes, p50 {fmt(row['p50_ms'], 2)} ms, p99 {fmt(row['p99_ms'], 2)} ms, "
                f"max {fmt(row['max_ms'], 2)} ms; a raw etcd put to all 4 routers: p50 "
                f"{fmt(raw.get('from_put_sent_ms', {}).get('p50_ms'), 2)} ms, p99 "
                f"{fmt(raw.get('from_put_sent_ms', {}).get('p99_ms'), 2)} ms from the put sent; "
                f"gateway GET p50 {fmt(row['get_p50_ms'], 2)} ms, p99 {fmt(row['get_p99_ms'], 2)} ms"
                + _propagation_clocks(row))
        elif kind == "writes":
            lines.append(
                f"- {row['name']}: {fmt(row['patch_per_s'], 0)} PATCH/s ({fmt(row['ratio_vs_etcd_txn'], 3)}x etcd's "
                f"{fmt(row['etcd_txn_per_s'], 0)} txn/s; medians of {len(row.get('repeats', [1]))} repetitions, each "
                f"against etcd's rate measured just before it), p50 {fmt(row['p50_ms'], 1)} ms, p99 {fmt(row['p99_ms'], 1)} ms, "
                f"{row['ok']} x 200, {row['failed']} other, lost updates {row['lost_updates']}, "
                f"challengers not at their last write {row['challengers_not_last_written']}")
        elif kind == "scale":
            p = row.get("propagation") or {}
            raw = p.get("etcd_put_to_routers", {}).get("from_put_sent_ms", {})
            lines.append(
                f"- {row['name']}: router cold start to SERVING {fmt(row['cold_start_s'], 2)} s (median of "
                f"{len(row['cold_start_runs_s'])}), RSS {fmt(row['rss_mb'], 0)} MB; PATCH 200 -> 4 routers p50 "
                f"{fmt(p.get('p50_ms'), 2)} ms, p99 {fmt(p.get('p99_ms'), 2)} ms; raw put -> 4 routers p50 "
                f"{fmt(raw.get('p50_ms'), 2)} ms, p99 {fmt(raw.get('p99_ms'), 2)} ms; gateway GET p50 "
                f"{fmt(p.get('get_p50_ms'), 2)} ms, p99 {fmt(p.get('get_p99_ms'), 2)} ms")
        elif kind == "precision":
            checks = ", ".join(f"{name} {c['observed']} of {row['requests']} (expected {c['expected']:.0f} "
                               f"+-{c['bound']:.0f})" for name, c in row["checks"].items())
            lines.append(f"- {row['name']}: {checks}; 90/10 load runs within the bound: "
                         f"{row['split_runs_within_bound']}")
        elif kind == "guardrails":
            lines.append(f"- {row['summary']}")
        elif kind == "profile":
            for key in ("python", "gil"):
                prof = row.get(key) or {}
                if "self" not in prof:
                    continue
                top = ", ".join(f"{f['frame']} {f['pct']}%" for f in prof["self"][:6])
                lines.append(f"- {row['name']} ({key}, {prof['samples']} samples, "
                             f"{fmt(prof.get('req_per_s_while_sampling'), 0)} req/s): {top}")
    return lines


def _propagation_clocks(row: dict) -> str:
    """Which clock the figure is on, and the other one (bench/propagation.py)."""
    patch = row.get("patch")
    if not patch:
        return ""
    client = patch["client_answered"]
    return (f"; clock: {row.get('clock', '?')}; a client's first new-version answer p50 "
            f"{fmt(client['p50_ms'], 2)} ms, p99 {fmt(client['p99_ms'], 2)} ms (probe round trip p50 "
            f"{fmt(patch['probe_round_trip']['p50_ms'], 2)} ms); contradictions {patch['contradictions']}, "
            f"unlogged swaps {patch['unlogged_swaps']}")
