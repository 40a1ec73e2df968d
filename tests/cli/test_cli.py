"""The real `tsplit` commands against a real stack started by `tsplit up`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tsplit.cli.stack import pid_alive
from tsplit.inference import grpc_predict_v2_pb2 as oip
from tsplit.inference import grpc_predict_v2_pb2_grpc as oip_grpc

TSPLIT = str(Path(sys.executable).parent / "tsplit")


def tsplit(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([TSPLIT, *args], capture_output=True, text=True, timeout=90, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"tsplit {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def all_pids(stack: dict) -> list[int]:
    pids = [stack["etcd"]["pid"], stack["controlplane"]["pid"], stack["gateway"]["pid"]]
    return pids + [r["pid"] for r in stack["routers"]] + [m["pid"] for m in stack["demo_models"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    tsplit("up", "--dir", str(directory), "--routers", "2", "--demo-models", "--detach")
    data = json.loads((directory / "stack.json").read_text())
    yield directory, data
    if (directory / "stack.json").exists():
        tsplit("down", "--dir", str(directory), check=False)


def infer(address: str, slug: str, count: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with grpc.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for i in range(count):
            request = oip.ModelInferRequest(model_name=slug, inputs=[oip.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 2],
                contents=oip.InferTensorContents(fp32_contents=[i % 7 / 7, 0.5]))])
            _, call = stub.ModelInfer.with_call(request, timeout=5)
            variant = dict(call.initial_metadata())["tsplit-variant"]
            counts[variant] = counts.get(variant, 0) + 1
    return counts


def test_stack_json_has_the_documented_keys(stack):
    _, data = stack
    assert data["etcd"]["endpoints"] and data["etcd"]["pid"]
    assert data["controlplane"]["address"].startswith("127.0.0.1:")
    assert data["gateway"]["url"].startswith("http://127.0.0.1:")
    assert len(data["routers"]) == 2 and all(r["metrics_url"].endswith("/metrics") for r in data["routers"])
    assert {m["model_name"] for m in data["demo_models"]} == {"linear-a", "linear-b", "linear-c"}
    assert Path(data["jwt"]["private_key"]).exists() and data["jwt"]["admin_token"].count(".") == 2
    assert all(pid_alive(p) for p in all_pids(data))


def test_get_counts_match_traffic_sent(stack):
    directory, data = stack
    d = ["--dir", str(directory)]
    models = {m["model_name"]: m["model_id"] for m in data["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_cli", *d)
    desired = {"deployment": "dep_cli", "champion": models["linear-a"], "shadow_mode": False,
               "challengers": [{"model_id": models["linear-b"], "traffic_pct": 25}]}
    out = tsplit("apply", "-f", "-", *d, stdin=json.dumps(desired)).stdout
    assert "+ challenger" in out and "version 2" in out
    sent = infer(data["routers"][0]["address"], "dep_cli", 200)
    sent2 = infer(data["routers"][1]["address"], "dep_cli", 100)
    for k, v in sent2.items():
        sent[k] = sent.get(k, 0) + v
    # Routers publish counters at least every second: poll the JSON view, bounded.
    import time
    deadline = time.monotonic() + 10
    while True:
        view = json.loads(tsplit("get", "dep_cli", "--json", *d).stdout)
        rows = {v["variant"]: v for v in view["deployments"][0]["status"]["variants"]}
        if sum(r["requests"] for r in rows.values()) == 300 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert {k: rows[k]["requests"] for k in rows} == sent
    assert all(rows[k]["ok"] == sent[k] for k in sent)
    assert sorted(r["slots"] for r in rows.values()) == [2500, 7500]  # slots each variant owns
    text = tsplit("get", "dep_cli", *d).stdout
    assert "routers: 2/2 at version 2" in text and "linear-b" in text and "75" in text and "7500" in text


def test_apply_is_idempotent_and_refuses_a_stale_precondition(stack):
    directory, data = stack
    d = ["--dir", str(directory)]
    models = {m["model_name"]: m["model_id"] for m in data["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_apply", *d)
    desired = json.dumps({"deployment": "dep_apply", "champion": models["linear-a"], "shadow_mode": True,
                          "challengers": [{"model_id": models["linear-c"], "traffic_pct": 10}]})
    first = tsplit("apply", "-f", "-", "--json", *d, stdin=desired)
    assert json.loads(first.stdout)["changed"] is True
    again = tsplit("apply", "-f", "-", "--json", *d, stdin=desired)
    assert json.loads(again.stdout)["changed"] is False
    assert json.loads(again.stdout)["deployment"]["cache_version"] == 2
    # A stale precondition: the control plane refuses it with version_conflict.
    from tsplit.cli.changes import ControlPlaneClient
    from tsplit.cli.context import CliError, resolve
    import argparse
    ctx = resolve(argparse.Namespace(dir=str(directory)))
    with ControlPlaneClient(ctx) as cp, pytest.raises(CliError, match="version_conflict"):
        cp.apply("dep_apply", {**json.loads(desired), "shadow_mode": False}, expected=1)


def test_history_and_rollback_round_trip(stack):
    directory, data = stack
    d = ["--dir", str(directory)]
    models = {m["model_name"]: m["model_id"] for m in data["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_hist", *d)
    for pct in (10, 20):
        desired = {"deployment": "dep_hist", "champion": models["linear-a"], "shadow_mode": False,
                   "challengers": [{"model_id": models["linear-b"], "traffic_pct": pct}]}
        tsplit("apply", "-f", "-", *d, stdin=json.dumps(desired))
    out = tsplit("rollback", "dep_hist", "--to", "2", *d).stdout
    assert "now version 4" in out
    history = json.loads(tsplit("history", "dep_hist", "--json", *d).stdout)["versions"]
    assert [v["cache_version"] for v in history] == [1, 2, 3, 4]
    assert history[-1]["action"] == "rollback"
    pct = [c["traffic_pct"] for c in history[-1]["config"]["challengers"] if c["is_active"]]
    assert pct == [10]
    assert [v["slots_moved"] for v in history] == [0, 1000, 1000, 1000]  # each version moved 10 % of the slots
    text = tsplit("history", "dep_hist", *d).stdout
    assert "rollback" in text and "slots moved" in text


def test_guardrails_shows_and_sets_the_policy_and_apply_takes_it(stack):
    directory, data = stack
    d = ["--dir", str(directory)]
    models = {m["model_name"]: m["model_id"] for m in data["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_guard", *d)
    assert "has no guardrails" in tsplit("guardrails", "dep_guard", *d).stdout
    out = tsplit("guardrails", "dep_guard", "--steps", "5,10,25", "--alpha", "0.05", *d).stdout
    assert "guardrails set (version 2)" in out and "[5, 10, 25]" in out
    shown = json.loads(tsplit("guardrails", "dep_guard", "--latency-quantile", "off", "--json", *d).stdout)
    assert shown["guardrails"] == {"alpha": 0.05, "error_rate": True, "latency_quantile": None, "srm": True,
                                   "steps": [5, 10, 25], "step_after_requests": 2000}
    bad = tsplit("guardrails", "dep_guard", "--alpha", "0.9", *d, check=False)
    assert bad.returncode == 1 and "invalid_request" in bad.stderr and "alpha" in bad.stderr
    desired = {"deployment": "dep_guard", "champion": models["linear-a"], "shadow_mode": False,
               "challengers": [{"model_id": models["linear-b"], "traffic_pct": 5}], "guardrails": {"steps": [5, 10]}}
    out = tsplit("apply", "-f", "-", *d, stdin=json.dumps(desired)).stdout
    assert "~ guardrails" in out and "version 4" in out
    history = json.loads(tsplit("history", "dep_guard", "--json", *d).stdout)["versions"]
    assert [v["action"] for v in history] == ["create", "set_guardrails", "set_guardrails", "apply"]
    assert history[-1]["config"]["guardrails"]["steps"] == [5, 10]
    assert "removed" in tsplit("guardrails", "dep_guard", "--off", *d).stdout


def test_routers_and_models_list(stack):
    directory, data = stack
    routers = json.loads(tsplit("routers", "--json", "--dir", str(directory)).stdout)["routers"]
    assert sorted(r["router_id"] for r in routers) == ["r-1", "r-2"]
    models = json.loads(tsplit("models", "list", "--json", "--dir", str(directory)).stdout)["models"]
    assert {m["model_id"] for m in models} >= {m["model_id"] for m in data["demo_models"]}


def test_unreachable_etcd_and_control_plane_are_clear_errors(tmp_path):
    result = tsplit("get", "--etcd", "127.0.0.1:9", check=False)
    assert result.returncode == 1 and "127.0.0.1:9" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    result = tsplit("deployments", "create", "--champion", "mod_x", "--controlplane", "127.0.0.1:9",
                    "--token", "x.y.z", "--dir", str(tmp_path), check=False)
    assert result.returncode == 1 and "127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr
    result = tsplit("get", "--dir", str(tmp_path), check=False)
    assert result.returncode == 1 and "tsplit up" in result.stderr


def test_down_leaves_no_process(tmp_path):
    tsplit("up", "--dir", str(tmp_path), "--routers", "1", "--detach")
    data = json.loads((tmp_path / "stack.json").read_text())
    pids = [data["etcd"]["pid"], data["controlplane"]["pid"], data["gateway"]["pid"], data["routers"][0]["pid"]]
    assert all(pid_alive(p) for p in pids)
    second = tsplit("up", "--dir", str(tmp_path), "--detach", check=False)
    assert second.returncode == 1 and "already running" in second.stderr
    tsplit("down", "--dir", str(tmp_path))
    assert not any(pid_alive(p) for p in pids)
    assert not (tmp_path / "stack.json").exists()
