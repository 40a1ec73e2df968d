"""The harness's reporting: profile summaries, the tables, the seeded bench configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench import procs, profile, report
from bench.seed import BenchBackends, bench_deployments, bench_models

COLLAPSED = """\
<module> (tsplit-router:8);main (/work/main/dataplane/server.py:360);run (asyncio/runners.py:190);Handle._run (asyncio/events.py:84) 50
<module> (tsplit-router:8);main (/work/main/dataplane/server.py:360);model_infer (/work/main/dataplane/router.py:120);_invoke (/x/site-packages/grpc/aio/_call.py:500) 30
<module> (tsplit-router:8);main (/work/main/dataplane/server.py:360);model_infer (/work/main/dataplane/router.py:131) 20
not a sample line
"""


def test_profile_summary_counts_self_and_inclusive_samples():
    summary = profile.summarize(COLLAPSED)
    assert summary["samples"] == 100
    own = {f["frame"]: f["pct"] for f in summary["self"]}
    assert own == {"Handle._run (asyncio/events.py)": 50.0, "_invoke (grpc/aio/_call.py)": 30.0,
                   "model_infer (dataplane/router.py)": 20.0}
    inclusive = {f["frame"]: f["samples"] for f in summary["inclusive"]}
    # two lines of model_infer (different line numbers) are one frame
    assert inclusive["model_infer (dataplane/router.py)"] == 50
    assert inclusive["main (dataplane/server.py)"] == 100


def test_profile_summary_of_nothing_is_empty():
    assert profile.summarize("") == {"samples": 0, "self": [], "inclusive": []}


def test_record_command_never_pauses_the_router(tmp_path):
    cmd = profile.record_command("py-spy", 42, 5.5, tmp_path / "out.txt", gil_only=True)
    assert cmd[:2] == ["py-spy", "record"] and "--nonblocking" in cmd and "--gil" in cmd
    assert cmd[cmd.index("--pid") + 1] == "42" and cmd[cmd.index("--duration") + 1] == "5"
    assert cmd[cmd.index("--format") + 1] == "raw"


def test_load_table_shows_ratios_and_not_built_rows():
    rows = [
        {"name": "nginx split 90/10", "status": "ok", "median": {"req_per_s": 2000.0, "p50_ms": 10.0, "p99_ms": 40.0},
         "ratios": {"req_vs_nginx": 1.0, "req_vs_direct": 0.5, "p50_vs_nginx": 1.0, "p99_vs_nginx": 1.0}, "errors": 0},
        {"name": "router split 90/10", "status": "n/a (not built)"},
    ]
    table = report.load_table(rows).splitlines()
    assert table[0].startswith("| row") and len(table) == 4
    assert "2,000" in table[2] and "1.00x / 1.00x" in table[2] and "0.50" in table[2]
    assert "n/a (not built)" in table[3]
    assert len({len(line) for line in table}) == 1  # columns line up


def test_load_table_sums_the_cpu_the_hypervisor_took_during_a_rows_repetitions():
    runs = [{"req_per_s": 1.0, "steal_s": 0.25}, {"req_per_s": 1.0, "steal_s": 1.5}]
    rows = [{"name": "direct", "status": "ok", "median": {"req_per_s": 1.0}, "runs": runs},
            {"name": "older run", "status": "ok", "median": {"req_per_s": 1.0}, "runs": [{"req_per_s": 1.0}]}]
    table = report.load_table(rows).splitlines()
    assert "CPU stolen s" in table[0]
    assert "| 1.75 " in table[2] and "1.75" not in table[3]


def test_steal_seconds_is_a_running_total():
    first = procs.steal_seconds()
    assert 0 <= first <= procs.steal_seconds()


def test_stolen_during_is_what_the_running_total_grew_by_in_its_block():
    outer_start = procs.steal_seconds()
    with procs.StolenDuring() as stolen:
        sum(range(200_000))
    outer_end = procs.steal_seconds()
    assert 0 <= stolen.seconds <= outer_end - outer_start  # a difference, not the running total


def test_target_table_and_json(tmp_path):
    targets = [{"target": "3 propagation", "measured": "p99 4.0 ms", "bound": "<= 15 ms", "verdict": "met"}]
    assert "| 3 propagation | p99 4.0 ms | <= 15 ms | met     |" in report.target_table(targets)
    path = report.write_json({"targets": targets, "dir": Path("/x")}, tmp_path / "r", "stamp")
    assert path.name == "stamp.json" and '"verdict": "met"' in path.read_text()


def test_machine_names_cores_and_memory_and_the_kernels_cpu_grouping():
    m = report.machine()
    assert m["nproc"] >= 1 and m["memory_gib"] > 0
    setting = Path("/proc/sys/kernel/sched_autogroup_enabled")
    assert m["sched_autogroup"] == (setting.read_text().strip() == "1" if setting.exists() else None)
    assert m["process_sessions"] == "own"


@pytest.mark.parametrize("own", [True, False])
def test_a_child_leads_its_own_session_unless_one_session_and_stop_ends_its_group(tmp_path, own):
    procs.use_own_sessions(own)
    try:
        child = procs.Child("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                            tmp_path / "sleeper.log").start()
        assert report.machine()["process_sessions"] == ("own" if own else "one")
    finally:
        procs.use_own_sessions(True)
    try:
        assert os.getpgid(child.pid) == child.pid  # stop() signals this group
        assert (os.getsid(child.pid) == child.pid) == own
        assert (os.getsid(child.pid) == os.getsid(0)) == (not own)
    finally:
        child.stop(timeout=5)
    assert child.process.returncode is not None


def test_bench_configs_are_valid_splits():
    models = {m.model_id for m in bench_models(BenchBackends("h:1", "h:2", "h:3", "h:4"))}
    deployments = bench_deployments()
    assert {d.deployment_id for d in deployments} == {"dep_split", "dep_split_grpc", "dep_solo", "dep_shadow",
                                                            "dep_shadow_large", "dep_precise"}
    for d in deployments:
        assert d.challenger_bp <= 5000, d.deployment_id  # the 50 % cap of SPEC section 3
        assert {d.champion_model_id, *(c.model_id for c in d.challengers)} <= models
    # The REST rows: the split's models forward REST (http_endpoint), dep_split_grpc's translate.
    by_id = {m.model_id: m for m in bench_models(BenchBackends("h:1", "h:2", "h:3", "h:4", "h:5", "h:6"))}
    grpc_only = next(d for d in deployments if d.deployment_id == "dep_split_grpc")
    assert by_id["mod_champ001"].http_endpoint == "h:5" and by_id["mod_chall001"].http_endpoint == "h:6"
    assert not by_id[grpc_only.champion_model_id].http_endpoint
    assert not any(by_id[c.model_id].http_endpoint for c in grpc_only.challengers)
    precise = next(d for d in deployments if d.deployment_id == "dep_precise")
    assert sorted(c.traffic_bp for c in precise.challengers) == [1, 1234]


@pytest.mark.parametrize("value,expected", [(None, "-"), (1234.5, "1,234.5"), (3, "3")])
def test_fmt(value, expected):
    assert report.fmt(value) == expected
