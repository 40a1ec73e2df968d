"""The native rows' pure parts: CPU ticks from /proc stat lines, the summary's ratios and the
targets' verdicts. Fast, no processes but this one."""

from __future__ import annotations

import os
import time

from bench import native_rows as nr
from bench.procs import cpu_ticks_of_stat, tree_cpu_seconds


def test_cpu_ticks_read_utime_and_stime_past_a_command_name_with_spaces_and_parens():
    stat = "4242 (nginx: worker (x)) S 1 4242 4242 0 -1 4194560 10 0 0 0 120 35 7 9 20 0 1 0 100 0 0"
    assert cpu_ticks_of_stat(stat) == 155  # utime 120 + stime 35; children's 7 and 9 not counted


def test_tree_cpu_seconds_of_this_process_grows_with_work():
    before = tree_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert tree_cpu_seconds(os.getpid()) - before >= 0.1


def _row(req=None, p50=None, p99=None, cpu=None, errors=0, runs=None):
    return {"median": {"req_per_s": req, "p50_ms": p50, "p99_ms": p99, "cpu_us_per_req": cpu}, "errors": errors,
            "runs": runs or []}


def test_summary_ratios_and_verdicts_from_medians():
    sat = {nr.DIRECT: _row(10_000, 5, 9), nr.NGINX: _row(6000, 10, 20, 80), nr.NATIVE: _row(9000, 7, 15, 60)}
    one = {nr.DIRECT + nr.ONE: _row(p50=0.3), nr.NGINX + nr.ONE: _row(p50=0.5), nr.NATIVE + nr.ONE: _row(p50=0.52)}
    s = nr.summarize(sat, one)
    assert s["native_vs_nginx_req"] == 1.5 and s["native_vs_direct_req"] == 0.9
    assert s["cpu_us_per_req"] == {"nginx": 80, "native": 60, "native_auth": None}
    assert abs(s["added_ms_one_stream"]["native"] - 0.22) < 1e-9
    assert abs(s["added_native_vs_nginx"] - 1.1) < 1e-9
    assert [ok for *_, ok in nr.verdicts(s)] == [True, True, True, True]


def test_verdicts_miss_when_native_is_slower_and_say_na_without_a_native_row():
    sat = {nr.DIRECT: _row(10_000, 5, 9), nr.NGINX: _row(6000, 10, 20, 80), nr.NATIVE: _row(5000, 12, 25, 90)}
    one = {nr.DIRECT + nr.ONE: _row(p50=0.3), nr.NGINX + nr.ONE: _row(p50=0.5), nr.NATIVE + nr.ONE: _row(p50=0.6)}
    assert [ok for *_, ok in nr.verdicts(nr.summarize(sat, one))] == [False, False, False, False]
    del sat[nr.NATIVE], one[nr.NATIVE + nr.ONE]
    assert [ok for *_, ok in nr.verdicts(nr.summarize(sat, one))] == [None, None, None, None]


def test_auth_costs_its_throughput_share_and_is_na_when_the_guard_saw_no_token_check():
    sat = {nr.NGINX: _row(6000, 10, 20, 80), nr.NATIVE: _row(10_000, 7, 15, 60, runs=[{"req_per_s": 10_000}]),
           nr.AUTH: _row(9400, 7, 15, 64, runs=[{"req_per_s": 9000}])}
    s = nr.summarize(sat, {})
    assert s["auth_vs_native_req"] == 0.94 and s["auth_vs_native_req_per_round"] == [0.9]
    target, measured, _, ok = nr.auth_verdict(s, "")
    assert ok is False and "0.94x" in measured
    sat[nr.AUTH] = _row(9600, 7, 15, 64)
    assert nr.auth_verdict(nr.summarize(sat, {}), "")[3] is True
    guard = "n/a (a call without a token got {'OK': 3}: tokens not checked)"
    assert nr.auth_verdict(nr.summarize(sat, {}), guard)[1:] == (guard, ">= 0.95x the native row's req/s", None)


def test_rest_verdicts_read_throughput_vs_nginx_cpu_vs_nginx_and_translated_cpu_at_one_rate():
    rows = {nr.REST_DIRECT: _row(9000), nr.REST_NGINX: _row(5000, cpu=60), nr.REST_NATIVE: _row(5500, cpu=55),
            nr.REST_TRANSLATED: _row(900, cpu=300), nr.REST_FORWARDED_RATE: _row(640, cpu=100),
            nr.REST_TRANSLATED_RATE: _row(640, cpu=190)}
    rest = nr.summarize_rest(rows)
    assert rest["native_vs_nginx_req"] == 1.1 and rest["translated_vs_forwarded_cpu"] == 1.9
    assert [ok for *_, ok in nr.rest_verdicts(rest)] == [True, True, True]
    rows[nr.REST_NATIVE] = _row(5500, cpu=55, errors=3)  # fast answers that are errors are no answers
    rows[nr.REST_TRANSLATED_RATE] = _row(640, cpu=210)
    assert [ok for *_, ok in nr.rest_verdicts(nr.summarize_rest(rows))] == [False, True, False]
    assert [ok for *_, ok in nr.rest_verdicts(nr.summarize_rest({}))] == [None, None, None]


def test_shadow_verdicts_p99_ratio_and_small_calls_beside_large_ones():
    large_runs = [{"large_2xx": 30, "large_errors": 0, "large_p99_ms": 400.0}]
    rows = {nr.SHADOW_OFF: _row(600, 5, 20), nr.SHADOW_ON: _row(600, 5, 21),
            nr.SHADOW_LARGE: _row(600, 6, 90, runs=large_runs)}
    shadow = nr.summarize_shadow(rows)
    assert shadow["on_vs_off_p99"] == 1.05 and shadow["large"]["answered"] == 30
    assert [ok for *_, ok in nr.shadow_verdicts(shadow)] == [True, True]
    rows[nr.SHADOW_LARGE] = _row(600, 6, 90, runs=[{**large_runs[0], "large_errors": 2}])
    rows[nr.SHADOW_ON] = _row(600, 5, 23)
    assert [ok for *_, ok in nr.shadow_verdicts(nr.summarize_shadow(rows))] == [False, False]
    del rows[nr.SHADOW_LARGE]
    assert nr.shadow_verdicts(nr.summarize_shadow(rows))[1][3] is None
