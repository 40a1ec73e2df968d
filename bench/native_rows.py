"""The native router's rows (issue 11 targets 1-4, issue 12's REST and auth targets), interleaved
in one run on the same backends:

- gRPC, saturating and at one stream: direct, nginx (split_clients + grpc_pass,
  worker_processes auto), the native router, and the native router with `--auth jwt` (one
  token reused; saturating only).
- REST (h2load --h1, 64 connections, one request each in flight): direct to the backends'
  REST side, nginx proxy_pass with split_clients to the same REST backends, the native router
  forwarding REST to the models' http_endpoint, and the native router translating REST to
  ModelInfer (models without http_endpoint).
- Shadow at a fixed rate: the native router with shadow off, off with h2load loading the slow
  backends with their share of copies (the floor), on (two 50 ms slower
  challengers), and on beside 8 MiB requests to another deployment on the same router, each
  mirrored to a slow challenger; and the two REST paths at one offered rate (their CPU per request).

Each proxy's CPU per request is read from /proc for its whole process tree
(bench.procs.tree_cpu_seconds)."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import replace
from pathlib import Path

from bench.stats import median_or_none, ratio

DIRECT = "native phase: direct"
NGINX = "native phase: nginx split 90/10, worker_processes auto"
NATIVE = "native phase: native router split 90/10"
AUTH = "native phase: native router split 90/10, --auth jwt (one token)"
ONE = " @1 stream"
REST_DIRECT = "native phase: REST direct"
REST_NGINX = "native phase: REST nginx proxy_pass split 90/10"
REST_NATIVE = "native phase: REST native router split 90/10 (http_endpoint: forwarded)"
REST_TRANSLATED = "native phase: REST native router split 90/10 (no http_endpoint: to ModelInfer)"
SHADOW_OFF = "native phase: native shadow off @rate"
SHADOW_ON = "native phase: native shadow on x2 (25%+25%) @rate"
# Shadow off while h2load sends the slow backends their share of copies straight: what the
# challengers' own work costs the champion on the shared cores (the floor of the shadow row).
SHADOW_FLOOR = "native phase: native shadow off, slow backends loaded @rate"
SHADOW_LARGE = "native phase: native shadow on x2 beside 8 MiB mirrored requests @rate"
REST_FORWARDED_RATE = "native phase: REST native router forwarded @rate"
REST_TRANSLATED_RATE = "native phase: REST native router translated to ModelInfer @rate"
LARGE_MIB = 8
LARGE_RPS = 4
REST_CLIENTS = 64  # HTTP/1.1 connections, one request each in flight: as many as the gRPC rows' streams
# The REST paths' CPU per request compared at one offered rate (16 connections x 40 req/s),
# below both paths' saturation: at saturation the translated path waits on the gRPC backend
# (slower than the REST side), and a proxy's CPU per request grows as its load falls.
REST_RATE_CLIENTS, REST_RATE_RPS = 16, 40


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


def _m(rows: dict[str, dict], name: str, key: str) -> float | None:
    return ((rows.get(name) or {}).get("median") or {}).get(key)


def round_ratios(rows: dict[str, dict], name: str, reference: str, key: str = "req_per_s") -> list[float]:
    """name's figure over reference's, repetition by repetition (each pair ran back to back)."""
    a, b = (rows.get(name) or {}).get("runs") or [], (rows.get(reference) or {}).get("runs") or []
    return [round(x[key] / y[key], 3) for x, y in zip(a, b) if x.get(key) is not None and y.get(key)]


def summarize(saturating: dict[str, dict], one_stream: dict[str, dict]) -> dict:
    """The figures the gRPC targets read, from the rows' medians (None where a row is missing):
    throughput ratios, CPU per request, latency added at one stream in flight, p50/p99 at
    saturation, the cost of --auth jwt."""
    m = _m
    direct_one = m(one_stream, DIRECT + ONE, "p50_ms")

    def added(name: str) -> float | None:
        p50 = m(one_stream, name + ONE, "p50_ms")
        return None if p50 is None or direct_one is None else p50 - direct_one

    out = {
        "native_vs_nginx_req": ratio(m(saturating, NATIVE, "req_per_s"), m(saturating, NGINX, "req_per_s")),
        "native_vs_nginx_req_per_round": round_ratios(saturating, NATIVE, NGINX),
        "native_vs_direct_req": ratio(m(saturating, NATIVE, "req_per_s"), m(saturating, DIRECT, "req_per_s")),
        "auth_vs_native_req": ratio(m(saturating, AUTH, "req_per_s"), m(saturating, NATIVE, "req_per_s")),
        "auth_vs_native_req_per_round": round_ratios(saturating, AUTH, NATIVE),
        "cpu_us_per_req": {name: m(saturating, full, "cpu_us_per_req")
                           for name, full in (("nginx", NGINX), ("native", NATIVE),
                                              ("native_auth", AUTH))},
        "added_ms_one_stream": {"nginx": added(NGINX), "native": added(NATIVE)},
        "saturation_ms": {name: {"p50": m(saturating, full, "p50_ms"), "p99": m(saturating, full, "p99_ms")}
                          for name, full in (("nginx", NGINX), ("native", NATIVE))},
    }
    a = out["added_ms_one_stream"]
    # An added latency at or below 0 (noise) cannot make a ratio: the router then added nothing.
    out["added_native_vs_nginx"] = ratio(a["native"], a["nginx"]) if a["nginx"] and a["nginx"] > 0 else None
    return out


def summarize_rest(rows: dict[str, dict]) -> dict:
    m = _m
    return {
        "native_vs_nginx_req": ratio(m(rows, REST_NATIVE, "req_per_s"), m(rows, REST_NGINX, "req_per_s")),
        "native_vs_nginx_req_per_round": round_ratios(rows, REST_NATIVE, REST_NGINX),
        "native_vs_direct_req": ratio(m(rows, REST_NATIVE, "req_per_s"), m(rows, REST_DIRECT, "req_per_s")),
        "translated_vs_nginx_req": ratio(m(rows, REST_TRANSLATED, "req_per_s"), m(rows, REST_NGINX, "req_per_s")),
        "cpu_us_per_req": {name: m(rows, full, "cpu_us_per_req") for name, full in
                           (("nginx", REST_NGINX), ("forwarded", REST_NATIVE), ("translated", REST_TRANSLATED))},
        "translated_vs_forwarded_cpu_saturating": ratio(m(rows, REST_TRANSLATED, "cpu_us_per_req"),
                                                        m(rows, REST_NATIVE, "cpu_us_per_req")),
        "cpu_us_per_req_at_rate": {name: m(rows, full, "cpu_us_per_req") for name, full in
                                   (("forwarded", REST_FORWARDED_RATE), ("translated", REST_TRANSLATED_RATE))},
        "translated_vs_forwarded_cpu": ratio(m(rows, REST_TRANSLATED_RATE, "cpu_us_per_req"),
                                             m(rows, REST_FORWARDED_RATE, "cpu_us_per_req")),
        "req_per_s_at_rate": {name: m(rows, full, "req_per_s") for name, full in
                              (("forwarded", REST_FORWARDED_RATE), ("translated", REST_TRANSLATED_RATE))},
        "errors": {name: (rows.get(full) or {}).get("errors") for name, full in
                   (("direct", REST_DIRECT), ("nginx", REST_NGINX), ("forwarded", REST_NATIVE),
                    ("translated", REST_TRANSLATED))},
    }


def summarize_shadow(rows: dict[str, dict]) -> dict:
    m = _m
    large_runs = (rows.get(SHADOW_LARGE) or {}).get("runs") or []
    return {
        "p99_ms": {name: m(rows, full, "p99_ms") for name, full in
                   (("off", SHADOW_OFF), ("on", SHADOW_ON), ("on_beside_large", SHADOW_LARGE),
                    ("off_slow_backends_loaded", SHADOW_FLOOR))},
        "floor_vs_off_p99": ratio(m(rows, SHADOW_FLOOR, "p99_ms"), m(rows, SHADOW_OFF, "p99_ms")),
        "on_vs_off_p99": ratio(m(rows, SHADOW_ON, "p99_ms"), m(rows, SHADOW_OFF, "p99_ms")),
        "on_vs_off_p99_per_round": round_ratios(rows, SHADOW_ON, SHADOW_OFF, "p99_ms"),
        "errors": {name: (rows.get(full) or {}).get("errors") for name, full in
                   (("off", SHADOW_OFF), ("on", SHADOW_ON), ("on_beside_large", SHADOW_LARGE))},
        "mirrored": {name: (rows.get(full) or {}).get("mirrored") for name, full in
                     (("on", SHADOW_ON), ("on_beside_large", SHADOW_LARGE))},
        "large": {"mib": LARGE_MIB, "rps": LARGE_RPS,
                  "answered": sum(r.get("large_2xx") or 0 for r in large_runs),
                  "errors": sum(r.get("large_errors") or 0 for r in large_runs),
                  "p99_ms": median_or_none([r.get("large_p99_ms") for r in large_runs])} if large_runs else None,
    }


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _both(a: float | None, b: float | None, ok) -> bool | None:
    return None if a is None or b is None else bool(ok(a, b))


def verdicts(summary: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, bound, met) for issue 11 targets 1-3; met None where a figure is missing."""
    s, cpu, sat, f, both = summary, summary["cpu_us_per_req"], summary["saturation_ms"], _f, _both
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


def auth_verdict(summary: dict, guard: str) -> tuple[str, str, str, bool | None]:
    """Issue 12: --auth jwt costs <= 5 % of the gRPC row's throughput. guard is "" when the
    auth router rejected a call without a token (else why the row is n/a)."""
    bound = ">= 0.95x the native row's req/s"
    q = summary["auth_vs_native_req"]
    if guard or q is None:
        return ("auth --auth jwt cost (gRPC)", guard or "-", bound, None)
    cpu = summary["cpu_us_per_req"]
    return ("auth --auth jwt cost (gRPC)",
            f"{q:.2f}x req/s ({(1 - q) * 100:+.0f} % cost), CPU {_f(cpu['native_auth'], '.0f')} vs "
            f"{_f(cpu['native'], '.0f')} us/req", bound, q >= 0.95)


def rest_verdicts(rest: dict) -> list[tuple[str, str, str, bool | None]]:
    cpu, f, both = rest["cpu_us_per_req"], _f, _both
    errors = sum(v or 0 for v in rest["errors"].values())
    tail = f", {errors} errors" if errors else ""
    return [
        ("REST 1 throughput vs nginx proxy_pass",
         f"{f(rest['native_vs_nginx_req'])}x nginx, {f(rest['native_vs_direct_req'])}x direct" + tail, ">= 1.0x nginx",
         None if rest["native_vs_nginx_req"] is None else rest["native_vs_nginx_req"] >= 1.0 and not errors),
        ("REST 1 CPU per request", f"forwarded {f(cpu['forwarded'], '.0f')} us vs nginx {f(cpu['nginx'], '.0f')} us",
         "<= nginx's", both(cpu["forwarded"], cpu["nginx"], lambda a, b: a <= b)),
        ("REST 2 translated to gRPC, CPU per request",
         f"@{REST_RATE_CLIENTS * REST_RATE_RPS} req/s: translated {f(rest['cpu_us_per_req_at_rate']['translated'], '.0f')} us "
         f"vs forwarded {f(rest['cpu_us_per_req_at_rate']['forwarded'], '.0f')} us = "
         f"{f(rest['translated_vs_forwarded_cpu'])}x (saturating: {f(cpu['translated'], '.0f')} vs "
         f"{f(cpu['forwarded'], '.0f')} us = {f(rest['translated_vs_forwarded_cpu_saturating'])}x)",
         "<= 2x the forwarded REST path",
         None if rest["translated_vs_forwarded_cpu"] is None else rest["translated_vs_forwarded_cpu"] <= 2),
    ]


def shadow_verdicts(shadow: dict) -> list[tuple[str, str, str, bool | None]]:
    p99, errors, large = shadow["p99_ms"], shadow["errors"], shadow["large"]
    q = shadow["on_vs_off_p99"]
    on_errors = (errors["on"] or 0) + (errors["off"] or 0)
    floor = shadow.get("floor_vs_off_p99")
    out = [("native 4 shadow p99 (two 50 ms slower challengers)",
            f"{_f(p99['on'])} ms vs {_f(p99['off'])} ms off = {_f(q)}x"
            + (f" (slow backends loaded without mirrors: {floor:.2f}x)" if floor is not None else "")
            + (f", {on_errors} errors" if on_errors else ""), "<= 1.1x shadow off, no errors",
            None if q is None else q <= 1.1 and not on_errors)]
    small = p99["on_beside_large"]
    if small is None or large is None:
        out.append(("native 4 small calls beside 8 MiB mirrored requests", "-", "p99 <= 100 ms", None))
    else:
        bad = (errors["on_beside_large"] or 0) + large["errors"]
        out.append(("native 4 small calls beside 8 MiB mirrored requests",
                    f"p99 {small:.2f} ms; {large['answered']} requests of {LARGE_MIB} MiB answered"
                    + (f", {bad} errors" if bad else ""), "p99 <= 100 ms, no errors",
                    small <= 100 and not bad and large["answered"] > 0))
    return out


def token_headers(work: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the router's --auth jwt flags, the request header of one token), with the dev key pair
    in work/keys; the token is minted as `tsplit token` does (devkeys.mint_token, role admin)."""
    from bench.seed import BENCH_ORG
    from tsplit import devkeys

    keys = work / "keys"
    if not (keys / "dev-private.pem").exists():
        devkeys.write_key_pair(keys)
    token = devkeys.mint_token((keys / "dev-private.pem").read_bytes(), sub="bench", org_id=BENCH_ORG,
                               role="admin", ttl_s=6 * 3600)
    flags = ("--auth", "jwt", "--jwt-public-key", str(keys / "dev-public.pem"), "--jwt-issuer", devkeys.DEV_ISSUER,
             "--jwt-audience", devkeys.DEV_AUDIENCE)
    return flags, (f"authorization: Bearer {token}",)


async def auth_guard(address: str, model_name: str, headers: tuple[str, ...]) -> str:
    """"" when the router refuses a call without a token (UNAUTHENTICATED, and 401 over REST)
    and answers one with it; else why the auth row cannot be measured."""
    from bench import probe

    without = await probe.sample_answers(address, model_name, 3)
    if without.ok or set(without.codes) != {"UNAUTHENTICATED"}:
        return f"n/a (a call without a token got {dict(without.codes)}: tokens not checked)"
    rest_without = await probe.sample_rest(address, model_name, 2)
    if rest_without.ok or set(rest_without.codes) != {"401"}:
        return f"n/a (a REST call without a token got {dict(rest_without.codes)}: tokens not checked)"
    with_token = await probe.sample_answers(address, model_name, 3, headers=headers)
    if with_token.ok != with_token.sent:
        return f"n/a (a call with the token failed: {with_token.first_error})"
    return ""


async def phase(run) -> None:
    """Adds the rows, the summary rows and the targets to a bench.harness Run."""
    from bench import stack
    from bench.harness import NOT_BUILT
    from bench.loadrows import LoadTarget
    from bench.nginx import NginxUpstream

    b, sat, one, rate = run.backends, run.s.load, run.s.single_load, run.s.rate_load
    rest_load = replace(sat, clients=REST_CLIENTS, streams=1)
    rest_rate = replace(rate, clients=REST_RATE_CLIENTS, streams=1, rps=REST_RATE_RPS)
    build = native_build()
    both = (b.champion, b.challenger)
    split = lambda champion, challenger: (NginxUpstream("champion", champion, 9000),  # noqa: E731
                                          NginxUpstream("challenger", challenger, 1000))
    nginx = run.nginx("native-split", split(b.champion, b.challenger), worker_processes="auto")
    nginx_rest = run.nginx("native-rest", split(b.champion_http, b.challenger_http), worker_processes="auto",
                           protocol="http")
    grpc_rows: list = [LoadTarget(DIRECT, b.champion, "linear-a", (b.champion,), load=sat),
                       LoadTarget(NGINX, nginx, "dep_split", both, load=sat)]
    rest_rows: list = [LoadTarget(REST_DIRECT, b.champion_http, "linear-a", (b.champion,), load=rest_load, rest=True),
                       LoadTarget(REST_NGINX, nginx_rest, "dep_split", both, load=rest_load, rest=True)]
    rate_rows: list = []
    guard = "n/a (not built)"
    if stack.built(stack.ROUTER_MODULE) and build["built"]:
        native = (await run.router("bench-native")).address
        grpc_rows.append(LoadTarget(NATIVE, native, "dep_split", both, load=sat))
        rest_rows += [LoadTarget(REST_NATIVE, native, "dep_split", both, load=rest_load, rest=True),
                      LoadTarget(REST_TRANSLATED, native, "dep_split_grpc", both, load=rest_load, rest=True)]
        slow = (b.slow1, b.slow2)
        rate_rows += [LoadTarget(SHADOW_OFF, native, "dep_solo", (b.champion,), load=rate),
                      LoadTarget(SHADOW_ON, native, "dep_shadow", (b.champion,), slow, load=rate),
                      LoadTarget(SHADOW_FLOOR, native, "dep_solo", (b.champion,), load=rate, side_backends=slow),
                      LoadTarget(SHADOW_LARGE, native, "dep_shadow", (b.champion,), slow, load=rate,
                                 large_mib=LARGE_MIB, large_rps=LARGE_RPS, large_model="dep_shadow_large"),
                      LoadTarget(REST_FORWARDED_RATE, native, "dep_split", both, load=rest_rate, rest=True),
                      LoadTarget(REST_TRANSLATED_RATE, native, "dep_split_grpc", both, load=rest_rate, rest=True)]
        flags, headers = token_headers(run.work)
        authed = (await run.router("bench-native-auth", extra=flags)).address
        guard = await auth_guard(authed, "dep_split", headers)
        grpc_rows.append(LoadTarget(AUTH, authed, "dep_split", both, load=sat, headers=headers) if not guard
                         else {"name": AUTH, "status": guard})
    else:
        grpc_rows.append({"name": NATIVE, "status": NOT_BUILT})
    saturating = await run._run_interleaved(grpc_rows, "saturating")
    single = await run._run_interleaved(
        [replace(t, row=t.row + ONE, load=one) for t in grpc_rows if isinstance(t, LoadTarget) and t.row != AUTH]
        + [{**t, "name": t["name"] + ONE} for t in grpc_rows if isinstance(t, dict) and t["name"] != AUTH],
        "one stream")
    rest = await run._run_interleaved(rest_rows, "saturating")
    shadow = await run._run_interleaved(rate_rows, "fixed rate") if rate_rows else []
    for row in saturating + single + rest + shadow:
        cpu = (row.get("median") or {}).get("cpu_us_per_req")
        served = (row.get("median") or {}).get("backend_cpu_us_per_req")
        notes = ([f"proxy CPU {cpu:.0f} us/req"] if cpu is not None else []) + (
            [f"backends {served:.0f} us/req"] if served is not None else [])
        if notes:
            row["note"] = ", ".join(notes)
    run.rows.extend(saturating + single + rest + shadow)
    by_name = lambda rows: {r["name"]: r for r in rows}  # noqa: E731
    summary = summarize(by_name(saturating), by_name(single))
    rest_summary = summarize_rest(by_name(rest + shadow))
    shadow_summary = summarize_shadow(by_name(shadow))
    run.rows.append({"name": "native phase summary", "kind": "native", "status": "ok", "native_build": build,
                     "nginx_worker_processes": "auto", "auth_guard": guard or "rejected a call without a token",
                     **summary, "rest": rest_summary, "shadow": shadow_summary})
    for target, measured, bound, ok in (verdicts(summary) + shadow_verdicts(shadow_summary)
                                        + rest_verdicts(rest_summary) + [auth_verdict(summary, guard)]):
        run.target(target, measured, bound, ok)
