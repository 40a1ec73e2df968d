"""scripts/soak in miniature (8 s against the shared `tsplit up` stack): the script runs,
its checks pass and its report holds every figure RELIABILITY.md quotes. The real soak runs
for minutes outside CI; scripts/soak.py's pure parts are checked here too."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_a_short_soak_run_passes_its_checks_and_reports_every_figure(up_stack, tmp_path):
    report_path = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(SOAK), "--stack", str(up_stack.directory), "--duration", "8",
         "--callers-per-router", "2", "--patch-interval", "0.2", "--json", str(report_path)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] and all(report["checks"].values()), report["checks"]
    assert set(report["inference"]) == {r["address"] for r in up_stack.stack["routers"]}
    final = report["writes"]["final_version"]
    assert report["writes"]["versions_written"] >= 10 and final >= report["writes"]["versions_written"]
    for address, figures in report["inference"].items():
        assert figures["requests"] > 50 and figures["ok"] == figures["requests"], (address, figures)
        assert figures["applied_at_end"] == final and figures["versions_seen"] >= 2
    names = set(report["rss_mib"])
    assert {"etcd", "controlplane", "gateway", "router-1", "router-2"} <= names
    assert all(rss["start"] and rss["end"] for rss in report["rss_mib"].values())
    assert "check versions_contiguous: ok" in result.stdout


def soak_module():
    """scripts/soak.py as a module (scripts/ is no package)."""
    if "tsplit_soak_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tsplit_soak_script", SOAK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules["tsplit_soak_script"]


def test_soak_settings_refuse_what_cannot_run():
    soak = soak_module()
    for argv in (["--duration", "0"], ["--duration", "10", "--etcd-outage", "10"], ["--routers", "0"],
                 ["--patch-interval", "0"]):
        with pytest.raises(SystemExit):
            soak.parse_args(argv)
    assert soak.parse_args(["--duration", "60", "--etcd-outage", "30"]).etcd_outage_s == 30


def test_soak_churn_never_repeats_a_change_and_stays_under_the_cap():
    soak = soak_module()
    churn = soak.Soak.churn_body
    bodies = [churn(None, i, ["ch_a", "ch_b"]) for i in range(4000)]
    last: dict = {}
    for body in bodies:
        target = body.get("challenger_id", "shadow")
        value = body.get("traffic_pct", body.get("shadow_mode"))
        assert last.get(target) != value, "a change equal to the current state is a no-op"
        last[target] = value
        if "traffic_pct" in body:
            assert 1 <= body["traffic_pct"] <= 21 and round(body["traffic_pct"], 2) == body["traffic_pct"]
    assert soak.percentile([5, 1, 3, 2, 4], 0.5) == 3 and soak.percentile([], 0.5) is None
