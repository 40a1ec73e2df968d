"""The harness's verdicts from rows: ratios against nginx and direct, targets 1 and 2."""

from __future__ import annotations

from bench.harness import Run
from bench.settings import BenchSettings


def _row(name: str, kind: str, req: float, p50: float, p99: float) -> dict:
    return {"name": name, "kind": kind, "status": "ok", "runs": [],
            "median": {"req_per_s": req, "p50_ms": p50, "p99_ms": p99}}


def _run(tmp_path, rows: list[dict]) -> Run:
    run = Run(BenchSettings(), tmp_path)
    run.rows = rows
    run._load_ratios()
    return run


def test_router_at_two_thirds_of_nginx_meets_target_1(tmp_path):
    run = _run(tmp_path, [
        _row("direct", "saturating", 3000, 10, 40),
        _row("nginx split 90/10", "saturating", 1500, 20, 60),
        _row("router split 90/10", "saturating", 1000, 30, 100),
    ])
    router = run._row("router split 90/10")
    assert router["ratios"]["req_vs_nginx"] == 1000 / 1500
    assert router["ratios"]["req_vs_direct"] == 1000 / 3000
    assert router["ratios"]["p99_vs_nginx"] == 100 / 60
    target = next(t for t in run.targets if t["target"].startswith("1 "))
    assert target["verdict"] == "met"
    assert next(t for t in run.targets if t["target"].startswith("2 "))["verdict"] == "n/a"


def test_slow_router_or_slow_p99_misses_target_1(tmp_path):
    slow = _run(tmp_path, [_row("nginx split 90/10", "saturating", 1500, 20, 60),
                           _row("router split 90/10", "saturating", 800, 30, 100)])
    assert next(t for t in slow.targets if t["target"].startswith("1 "))["verdict"] == "MISSED"
    late = _run(tmp_path, [_row("nginx split 90/10", "saturating", 1500, 20, 60),
                           _row("router split 90/10", "saturating", 1400, 30, 130)])
    assert next(t for t in late.targets if t["target"].startswith("1 "))["verdict"] == "MISSED"


def test_shadow_target_compares_p99_with_mirrors_off(tmp_path):
    run = _run(tmp_path, [
        _row("router shadow off @rate", "fixed rate", 600, 5, 20),
        _row("router shadow on x2 (25%+25%) @rate", "fixed rate", 600, 6, 21),
    ])
    target = next(t for t in run.targets if t["target"].startswith("2 "))
    assert target["verdict"] == "met" and "1.05x" in target["measured"]
    assert run._row("router shadow on x2 (25%+25%) @rate")["note"] == "p99 1.05x of mirrors off"
    missed = _run(tmp_path, [
        _row("router shadow off @rate", "fixed rate", 600, 5, 20),
        _row("router shadow on x2 (25%+25%) @rate", "fixed rate", 600, 6, 30),
    ])
    assert next(t for t in missed.targets if t["target"].startswith("2 "))["verdict"] == "MISSED"


def test_one_stream_rows_say_what_a_hop_adds(tmp_path):
    run = _run(tmp_path, [
        _row("direct @1 stream", "one stream", 2000, 0.40, 2),
        _row("router split 90/10 @1 stream", "one stream", 600, 1.25, 7),
    ])
    assert run._row("router split 90/10 @1 stream")["note"] == "p50 +0.85 ms over direct"


def test_fast_errors_fail_target_1(tmp_path):
    """A router that answers grpc errors fast (HTTP 200, no backend reached) is not fast."""
    router = _row("router split 90/10", "saturating", 3000, 5, 20)
    router["errors"] = 12
    run = _run(tmp_path, [_row("nginx split 90/10", "saturating", 1500, 20, 60), router])
    target = next(t for t in run.targets if t["target"].startswith("1 "))
    assert target["verdict"] == "MISSED" and "12 errors" in target["measured"]
