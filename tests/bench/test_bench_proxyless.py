"""The proxyless bench rows: the generator for real (a short run against a bench backend,
direct and through a proxyless client), and the ratios and targets from given figures."""

from __future__ import annotations

import pytest

from bench import proxyless
from bench.procs import start_backend
from bench.seed import BenchBackends, bench_deployments, bench_models, write_deployments, write_models


@pytest.fixture
def bench_backend(tmp_path):
    child, address = start_backend(tmp_path, "champion")
    yield address
    child.stop()


@pytest.mark.parametrize("transport", proxyless.TRANSPORTS)
async def test_the_generator_loads_direct_and_proxyless_and_every_answer_is_a_backends(
        tmp_path, bench_backend, etcd, etcd_endpoint, layout, transport):
    backends = BenchBackends(bench_backend, bench_backend, bench_backend, bench_backend)
    await write_models(etcd, layout, bench_models(backends))
    await write_deployments(etcd, layout, bench_deployments())
    load = proxyless.PyLoad(concurrency=4, duration_s=0.5, warmup_requests=8, timeout_s=5)
    direct, nginx_like, routed = [t for t in proxyless.targets_for(backends, bench_backend)
                                  if t.transport == transport]
    for target in (direct, routed):
        result = await proxyless.run_once(target, load, tmp_path, etcd_endpoint, layout.prefix)
        assert result["ok"] > 10 and result["errors"] == 0 and result["unanswered_ok"] == 0, result
        assert result["req_per_s"] > 0 and result["p50_ms"] <= result["p99_ms"]
        assert result["cpu_us_per_req"] > 0
    # The proxyless run went through dep_split: both of its models were called.
    assert set(result["by_model"]) == {"linear-a", "linear-b"}
    assert nginx_like.compare_with == direct.row


def test_generator_commands_name_what_each_mode_needs():
    load = proxyless.PyLoad(concurrency=64, duration_s=6, warmup_requests=1000)
    direct = proxyless.PyTarget("d", "direct", "aio", "127.0.0.1:1", "linear-a", ("127.0.0.1:1",))
    routed = proxyless.PyTarget("p", "proxyless", "sync", "", "dep_split", ("127.0.0.1:1",))
    cmd = proxyless.generator_command(direct, load, "127.0.0.1:2379", "/bench")
    assert cmd[cmd.index("--target") + 1] == "127.0.0.1:1" and "--etcd" not in cmd
    cmd = proxyless.generator_command(routed, load, "127.0.0.1:2379", "/bench")
    assert cmd[cmd.index("--etcd") + 1] == "127.0.0.1:2379" and cmd[cmd.index("--prefix") + 1] == "/bench"
    assert cmd[cmd.index("--concurrency") + 1] == "64" and "--target" not in cmd
    with pytest.raises(SystemExit):
        proxyless.main(["--mode", "direct", "--transport", "aio", "--model-name", "m"])   # no --target


class _Run:
    def __init__(self) -> None:
        self.targets: list[dict] = []

    def target(self, name, measured, bound, ok) -> None:
        self.targets.append({"target": name, "measured": measured, "bound": bound, "ok": ok})


def _rows(figures: dict[str, float]) -> dict[str, dict]:
    rows = {}
    for name, req_per_s in figures.items():
        runs = [{"by_model": {"linear-a": 900, "linear-b": 100}}]
        rows[name] = {"name": name, "runs": runs,
                      "median": {"req_per_s": req_per_s, "p50_ms": 1000 / req_per_s, "p99_ms": 2000 / req_per_s,
                                 "cpu_us_per_req": 200.0}}
    return rows


@pytest.mark.parametrize("proxyless_aio, proxyless_sync, verdicts", [
    (950, 1900, (True, True)),      # 0.95x direct, 1.19x nginx; 0.95x, 1.06x
    (850, 1900, (False, True)),     # aio under 0.9x direct
    (950, 1700, (False, False)),    # sync: 0.85x direct, 0.94x nginx
])
def test_targets_compare_rows_of_the_same_transport(proxyless_aio, proxyless_sync, verdicts):
    rows = _rows({"py aio: direct": 1000, "py aio: nginx split 90/10": 800, "py aio: proxyless split 90/10": proxyless_aio,
                  "py sync: direct": 2000, "py sync: nginx split 90/10": 1800,
                  "py sync: proxyless split 90/10": proxyless_sync})
    for transport in proxyless.TRANSPORTS:
        proxyless._row_ratios(rows, transport)
    assert rows["py aio: proxyless split 90/10"]["ratios"]["req_vs_direct"] == pytest.approx(proxyless_aio / 1000)
    assert rows["py sync: proxyless split 90/10"]["ratios"]["req_vs_nginx"] == pytest.approx(proxyless_sync / 1800)
    run = _Run()
    proxyless._targets(run, rows)
    assert tuple(t["ok"] for t in run.targets) == verdicts
    assert "within the binomial bound in 1/1 runs" in rows["py aio: proxyless split 90/10"]["note"]
