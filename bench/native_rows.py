"""The native router's rows (issue 11 targets 1-3): direct, nginx (split_clients + grpc_pass,
worker_processes auto), the Python router and `tsplit-router --server native`, the same
backends and the same h2load loads, interleaved in one run; each proxy's CPU per request
read from /proc for its whole process tree (bench.procs.tree_cpu_seconds)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from bench.stats import ratio

DIRECT = "native phase: direct"
NGINX = "native phase: nginx split 90/10, worker_processes auto"
PYTHON = "native phase: python router split 90/10 (--server aio)"
NATIVE = "native phase: native router split 90/10 (--server native)"
ONE = " @1 stream"


def native_build() -> dict:
    """Where dataplane._native comes from and whether it is a release build (no debug info:
    maturin's profile is release with LTO; a debug build carries .debug_info sections)."""
    spec = importlib.util.find_spec("dataplane._native")
    if spec is None or not spec.origin:
        return {"built": False}
    path = Path(spec.origin)
    try:
        sections = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True,
                                  timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        sections = ""
    return {"built": True, "path": str(path), "size_mb": round(path.stat().st_size / 1e6, 1),
            "debug_info": ".debug_info" in sections if sections else None}


def summarize(saturating: dict[str, dict], one_stream: dict[str, dict]) -> dict:
    """The figures the targets read, from the rows' medians (None where a row is missing):
    throughput ratios, CPU per request, latency added at one stream in flight, p50/p99 at
    saturation."""

    def m(rows: dict[str, dict], name: str, key: str) -> float | None:
        return ((rows.get(name) or {}).get("median") or {}).get(key)

    direct_one = m(one_stream, DIRECT + ONE, "p50_ms")

    def added(name: str) -> float | None:
        p50 = m(one_stream, name + ONE, "p50_ms")
        return None if p50 is None or direct_one is None else p50 - direct_one

    out = {
        "native_vs_nginx_req": ratio(m(saturating, NATIVE, "req_per_s"), m(saturating, NGINX, "req_per_s")),
        "native_vs_direct_req": ratio(m(saturating, NATIVE, "req_per_s"), m(saturating, DIRECT, "req_per_s")),
        "python_vs_nginx_req": ratio(m(saturating, PYTHON, "req_per_s"), m(saturating, NGINX, "req_per_s")),
        "cpu_us_per_req": {name: m(saturating, full, "cpu_us_per_req")
                           for name, full in (("nginx", NGINX), ("python", PYTHON), ("native", NATIVE))},
        "added_ms_one_stream": {"nginx": added(NGINX), "python": added(PYTHON), "native": added(NATIVE)},
        "saturation_ms": {name: {"p50": m(saturating, full, "p50_ms"), "p99": m(saturating, full, "p99_ms")}
                          for name, full in (("nginx", NGINX), ("native", NATIVE))},
    }
    a = out["added_ms_one_stream"]
    # An added latency at or below 0 (noise) cannot make a ratio: the router then added nothing.
    out["added_native_vs_nginx"] = ratio(a["native"], a["nginx"]) if a["nginx"] and a["nginx"] > 0 else None
    return out


def verdicts(summary: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, bound, met) for issue 11 targets 1-3; met None where a figure is missing."""
    s, cpu, sat = summary, summary["cpu_us_per_req"], summary["saturation_ms"]

    def f(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    def both(a: float | None, b: float | None, ok) -> bool | None:
        return None if a is None or b is None else bool(ok(a, b))

    added = s["added_ms_one_stream"]
    return [
        ("native 1 throughput", f"{f(s['native_vs_nginx_req'])}x nginx, {f(s['native_vs_direct_req'])}x direct",
         ">= 1.0x nginx (reach 1.2x), >= 0.8x direct",
         both(s["native_vs_nginx_req"], s["native_vs_direct_req"], lambda a, b: a >= 1.0 and b >= 0.8)),
        ("native 2 CPU per request", f"native {f(cpu['native'], '.0f')} us vs nginx {f(cpu['nginx'], '.0f')} us",
         "<= nginx's", both(cpu["native"], cpu["nginx"], lambda a, b: a <= b)),
        ("native 3 latency added @1 stream",
         f"native +{f(added['native'], '.3f')} ms vs nginx +{f(added['nginx'], '.3f')} ms",
         "<= 1.2x nginx's", both(added["native"], added["nginx"], lambda a, b: a <= 1.2 * max(b, 0.0) or a <= 0)),
        ("native 3 p50/p99 at saturation",
         f"native {f(sat['native']['p50'])}/{f(sat['native']['p99'])} ms vs nginx "
         f"{f(sat['nginx']['p50'])}/{f(sat['nginx']['p99'])} ms", "<= nginx's",
         both(sat["native"]["p99"], sat["nginx"]["p99"],
              lambda a, b: a <= b and sat["native"]["p50"] <= sat["nginx"]["p50"])),
    ]


async def phase(run) -> None:
    """Adds the rows, a "native" summary row and the targets to a bench.harness Run."""
    from bench import stack
    from bench.harness import NOT_BUILT
    from bench.loadrows import LoadTarget
    from bench.nginx import NginxUpstream

    b, sat, one = run.backends, run.s.load, run.s.single_load
    build = native_build()
    nginx = run.nginx("native-split", (NginxUpstream("champion", b.champion, 9000),
                                       NginxUpstream("challenger", b.challenger, 1000)), worker_processes="auto")
    both = (b.champion, b.challenger)
    rows: list[tuple[str, str, str, tuple[str, ...]]] = [
        (DIRECT, b.champion, "linear-a", (b.champion,)), (NGINX, nginx, "dep_split", both)]
    missing: list[dict] = []
    help_text = subprocess.run([stack.script("tsplit-router"), "--help"], capture_output=True, text=True,
                               timeout=30).stdout if stack.built(stack.ROUTER_MODULE) else ""
    if "aio" in help_text:
        rows.append((PYTHON, (await run.router("bench-native-py", extra=("--server", "aio"))).address, "dep_split", both))
    else:
        missing.append({"name": PYTHON, "status": "n/a (no --server aio)"})
    if "native" in help_text and build["built"]:
        rows.append((NATIVE, (await run.router("bench-native", extra=("--server", "native"))).address, "dep_split", both))
    else:
        missing.append({"name": NATIVE, "status": NOT_BUILT})
    saturating = await run._run_interleaved(
        [LoadTarget(name, address, model, answers, load=sat) for name, address, model, answers in rows] + missing,
        "saturating")
    single = await run._run_interleaved(
        [LoadTarget(name + ONE, address, model, answers, load=one) for name, address, model, answers in rows]
        + [{**m, "name": m["name"] + ONE} for m in missing], "one stream")
    for row in saturating + single:
        cpu = (row.get("median") or {}).get("cpu_us_per_req")
        if cpu is not None:
            row["note"] = f"proxy CPU {cpu:.0f} us/req"
    run.rows.extend(saturating + single)
    summary = summarize({r["name"]: r for r in saturating}, {r["name"]: r for r in single})
    run.rows.append({"name": "native phase summary", "kind": "native", "status": "ok", "native_build": build,
                     "nginx_worker_processes": "auto", **summary})
    for target, measured, bound, ok in verdicts(summary):
        run.target(target, measured, bound, ok)
