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


def _row(req=None, p50=None, p99=None, cpu=None):
    return {"median": {"req_per_s": req, "p50_ms": p50, "p99_ms": p99, "cpu_us_per_req": cpu}}


def test_summary_ratios_and_verdicts_from_medians():
    sat = {nr.DIRECT: _row(10_000, 5, 9), nr.NGINX: _row(6000, 10, 20, 80), nr.NATIVE: _row(9000, 7, 15, 60),
           nr.PYTHON: _row(3000, 20, 40, 600)}
    one = {nr.DIRECT + nr.ONE: _row(p50=0.3), nr.NGINX + nr.ONE: _row(p50=0.5), nr.NATIVE + nr.ONE: _row(p50=0.52)}
    s = nr.summarize(sat, one)
    assert s["native_vs_nginx_req"] == 1.5 and s["native_vs_direct_req"] == 0.9 and s["python_vs_nginx_req"] == 0.5
    assert s["cpu_us_per_req"] == {"nginx": 80, "python": 600, "native": 60}
    assert abs(s["added_ms_one_stream"]["native"] - 0.22) < 1e-9 and s["added_ms_one_stream"]["python"] is None
    assert abs(s["added_native_vs_nginx"] - 1.1) < 1e-9
    assert [ok for *_, ok in nr.verdicts(s)] == [True, True, True, True]


def test_verdicts_miss_when_native_is_slower_and_say_na_without_a_native_row():
    sat = {nr.DIRECT: _row(10_000, 5, 9), nr.NGINX: _row(6000, 10, 20, 80), nr.NATIVE: _row(5000, 12, 25, 90)}
    one = {nr.DIRECT + nr.ONE: _row(p50=0.3), nr.NGINX + nr.ONE: _row(p50=0.5), nr.NATIVE + nr.ONE: _row(p50=0.6)}
    assert [ok for *_, ok in nr.verdicts(nr.summarize(sat, one))] == [False, False, False, False]
    del sat[nr.NATIVE], one[nr.NATIVE + nr.ONE]
    assert [ok for *_, ok in nr.verdicts(nr.summarize(sat, one))] == [None, None, None, None]
