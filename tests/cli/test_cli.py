"""The real `tsplit` commands against a real stack started by `tsplit up`: reads, changes,
bare lists, help texts, model update/delete, apply that creates, --dry-run, plans as a
person writes them, pure JSON on stdout, promote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
    assert all(r["http_url"] == f"http://{r['address']}" for r in data["routers"])
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
    second = tsplit("up", "--dir", str(tmp_path), "--routers", "1", "--detach")  # all running: all kept
    assert "kept: etcd, controlplane, gateway, r-1" in second.stderr
    assert json.loads((tmp_path / "stack.json").read_text())["etcd"]["pid"] == data["etcd"]["pid"]
    tsplit("down", "--dir", str(tmp_path))
    assert not any(pid_alive(p) for p in pids)
    assert not (tmp_path / "stack.json").exists()


# --- operator experience (issue 14) ---------------------------------------------------

def _d(stack) -> list[str]:
    return ["--dir", str(stack[0])]


def _models(stack) -> dict[str, str]:
    return {m["model_name"]: m["model_id"] for m in stack[1]["demo_models"]}


def _subcommands(*path: str) -> list[str]:
    """The subcommand names argparse lists under `tsplit PATH --help`."""
    from tsplit.cli.main import build_parser
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._subparsers._group_actions).choices[name]
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return list(actions[0].choices) if actions else []


def test_every_subcommand_has_a_description_in_its_help():
    for command in _subcommands():
        for path in [(command,)] + [(command, sub) for sub in _subcommands(command)]:
            out = tsplit(*path, "--help").stdout
            usage, _, rest = out.partition("\n\n")
            description = rest.split("\n\n")[0].strip()
            assert description and not description.startswith(("positional", "options")), (path, out)


def test_bare_models_and_deployments_list(stack):
    models = tsplit("models", *_d(stack)).stdout
    assert all(m in models for m in _models(stack).values())
    tsplit("deployments", "create", "--champion", _models(stack)["linear-a"], "--id", "dep_bare", *_d(stack))
    assert "dep_bare" in tsplit("deployments", *_d(stack)).stdout
    listed = json.loads(tsplit("deployments", "--json", *_d(stack)).stdout)
    assert "dep_bare" in [d["config"]["deployment_id"] for d in listed["deployments"]]


def test_models_register_update_delete(stack):
    d = _d(stack)
    model = json.loads(tsplit("models", "register", "--endpoint", "127.0.0.1:1", "--model-name", "spare",
                              "--http-endpoint", "127.0.0.1:2", "--json", *d).stdout)
    assert model["http_endpoint"] == "127.0.0.1:2"
    updated = json.loads(tsplit("models", "update", model["model_id"], "--endpoint", "127.0.0.1:3",
                                "--http-endpoint", "", "--json", *d).stdout)
    assert updated["endpoint"] == "127.0.0.1:3" and updated["http_endpoint"] == "" and updated["model_name"] == "spare"
    nothing = tsplit("models", "update", model["model_id"], *d, check=False)
    assert nothing.returncode == 1 and "nothing to change" in nothing.stderr
    in_use = tsplit("models", "delete", _models(stack)["linear-a"], *d, check=False)
    assert in_use.returncode == 1 and "model_in_use" in in_use.stderr and "Traceback" not in in_use.stderr
    gone = json.loads(tsplit("models", "delete", model["model_id"], "--json", *d).stdout)
    assert gone == {"model_id": model["model_id"], "deleted": True}
    assert model["model_id"] not in tsplit("models", *d).stdout


def test_apply_creates_a_missing_deployment_and_dry_run_writes_nothing(stack):
    d, models = _d(stack), _models(stack)
    desired = json.dumps({"deployment": "dep_fresh", "champion": models["linear-a"], "shadow_mode": True,
                          "challengers": [{"model_id": models["linear-b"], "traffic_pct": 20}]})
    plan = tsplit("apply", "-f", "-", "--dry-run", *d, stdin=desired).stdout
    assert "dep_fresh does not exist" in plan and f"+ challenger {models['linear-b']} at 20%" in plan
    assert "shadow_mode: off -> on" in plan and "dry run: nothing written" in plan
    assert "dep_fresh" not in tsplit("deployments", *d).stdout
    created = tsplit("apply", "-f", "-", *d, stdin=desired).stdout
    assert "created: dep_fresh is version 1" in created
    shown = json.loads(tsplit("get", "dep_fresh", "--json", *d).stdout)["deployments"][0]["config"]
    assert shown["cache_version"] == 1 and shown["shadow_mode"] is True and shown["org_id"] == "org_1"


def test_plans_print_as_a_person_writes_them(stack):
    d, models = _d(stack), _models(stack)
    start = {"deployment": "dep_plan", "champion": models["linear-a"], "shadow_mode": False,
             "challengers": [{"model_id": models["linear-b"], "traffic_pct": 20},
                             {"model_id": models["linear-c"], "traffic_pct": 12.5}]}
    tsplit("apply", "-f", "-", *d, stdin=json.dumps(start))
    plan = tsplit("apply", "-f", "-", "--dry-run", *d, stdin=json.dumps(
        {**start, "shadow_mode": True, "challengers": [{"model_id": models["linear-c"], "traffic_pct": 30}]})).stdout
    assert "20% -> removed" in plan and "12.5% -> 30%" in plan and "shadow_mode: off -> on" in plan
    assert "None" not in plan and "False" not in plan and "True" not in plan
    table = tsplit("get", "dep_plan", *d).stdout
    assert "12.5" in table and "12.50" not in table and "67.5" in table and "67.50" not in table


def test_json_outputs_are_pure_json(stack):
    d, models = _d(stack), _models(stack)
    tsplit("deployments", "create", "--champion", models["linear-a"], "--id", "dep_json", *d)
    deleted = tsplit("deployments", "delete", "dep_json", "--json", *d)
    assert json.loads(deleted.stdout) == {"deployment_id": "dep_json", "deleted": True}
    # --watch --json: one JSON document a line, no ANSI codes, no footer.
    watch = subprocess.Popen([TSPLIT, "get", "--watch", "--json", "--interval", "0.2", *d],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 30
        while len(lines) < 3 and time.monotonic() < deadline:
            line = watch.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        watch.terminate()
        watch.wait(10)
    assert len(lines) == 3, lines
    assert all("deployments" in json.loads(line) for line in lines)
    # Plain --watch into a pipe: no escape codes either.
    plain = subprocess.Popen([TSPLIT, "get", "--watch", "--interval", "0.2", *d], stdout=subprocess.PIPE, text=True)
    try:
        first = plain.stdout.readline() + plain.stdout.readline()
    finally:
        plain.terminate()
        plain.wait(10)
    assert first and "\x1b" not in first


def test_token_ttl_must_be_positive(stack):
    for ttl in ("-100", "0"):
        refused = tsplit("token", "--ttl", ttl, *_d(stack), check=False)
        assert refused.returncode == 2 and "positive" in refused.stderr
    assert tsplit("token", "--ttl", "60", *_d(stack)).stdout.count(".") == 2


def test_promote_makes_the_challenger_the_champion(stack):
    from controlplane.actions import parse_traffic_action  # noqa: F401
    import controlplane.actions as actions
    if "promote_challenger" not in open(actions.__file__).read():
        pytest.skip("promote_challenger is not in the control plane yet (helper B's change)")
    d, models = _d(stack), _models(stack)
    tsplit("apply", "-f", "-", *d, stdin=json.dumps({
        "deployment": "dep_promote", "champion": models["linear-a"], "shadow_mode": False,
        "challengers": [{"model_id": models["linear-b"], "traffic_pct": 30}]}))
    missing = tsplit("promote", "dep_promote", models["linear-c"], *d, check=False)
    assert missing.returncode == 1 and "not an active challenger" in missing.stderr
    out = tsplit("promote", "dep_promote", models["linear-b"], *d).stdout
    assert f"{models['linear-b']} is now the champion" in out and "version 2" in out
    config = json.loads(tsplit("get", "dep_promote", "--json", *d).stdout)["deployments"][0]["config"]
    assert config["champion_model_id"] == models["linear-b"]
    assert not [c for c in config["challengers"] if c["is_active"]]
    counts = infer(stack[1]["routers"][0]["address"], "dep_promote", 50)
    assert set(counts) <= {"champion"}


def test_demo_into_a_file_has_no_escape_codes_and_removes_its_folder(tmp_path):
    import os
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("TSPLIT_DIR", None)
    result = subprocess.run([TSPLIT, "demo"], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== The seed's PATCH" in result.stdout
    assert "\x1b" not in result.stdout
    assert not list(tmp_path.glob("tsplit-demo.*")), list(tmp_path.iterdir())
    assert not (tmp_path / ".tsplit").exists()


def _stack_file(directory) -> dict:
    return json.loads((directory / "stack.json").read_text())


def test_stack_json_and_the_dev_key_are_readable_by_their_owner_only(stack):
    directory, data = stack
    assert (directory / "stack.json").stat().st_mode & 0o077 == 0
    assert Path(data["jwt"]["private_key"]).stat().st_mode & 0o077 == 0


def test_up_on_a_partly_running_stack_starts_only_what_is_down(tmp_path):
    import os
    import signal
    import socket
    d = ["--dir", str(tmp_path)]
    tsplit("up", *d, "--routers", "1", "--demo-models", "--detach")
    before = _stack_file(tmp_path)
    models = {m["model_name"]: m for m in before["demo_models"]}
    tsplit("deployments", "create", "--champion", models["linear-a"]["model_id"], "--id", "dep_heal", *d)
    try:
        os.kill(before["etcd"]["pid"], signal.SIGKILL)
        os.kill(models["linear-a"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (pid_alive(before["etcd"]["pid"]) or pid_alive(models["linear-a"]["pid"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Hold linear-a's old port so that it must come back on a new one.
        # The killed server's socket can take a moment to be released: retry, bounded.
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be in TIME_WAIT
        port = int(models["linear-a"]["endpoint"].rpartition(":")[2])
        for attempt in range(100):
            try:
                holder.bind(("127.0.0.1", port))
                break
            except OSError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        holder.listen()
        try:
            healed = tsplit("up", *d, "--routers", "1", "--demo-models", "--detach")
        finally:
            holder.close()
        after = _stack_file(tmp_path)
        assert after["etcd"]["endpoints"] == before["etcd"]["endpoints"] and after["etcd"]["pid"] != before["etcd"]["pid"]
        for part in ("controlplane", "gateway"):
            assert after[part]["pid"] == before[part]["pid"], part
        assert after["routers"][0]["pid"] == before["routers"][0]["pid"]
        moved = {m["model_name"]: m for m in after["demo_models"]}
        assert moved["linear-b"]["pid"] == models["linear-b"]["pid"]
        assert moved["linear-a"]["model_id"] == models["linear-a"]["model_id"]
        assert moved["linear-a"]["endpoint"] != models["linear-a"]["endpoint"]
        assert "updated in place" in healed.stderr
        # The deployment survived (etcd came back on its data) and routes to the moved model.
        shown = json.loads(tsplit("models", "--json", *d).stdout)["models"]
        assert {m["model_id"]: m["endpoint"] for m in shown}[moved["linear-a"]["model_id"]] == moved["linear-a"]["endpoint"]
        deadline = time.monotonic() + 20
        while True:
            try:
                assert infer(after["routers"][0]["address"], "dep_heal", 5) == {"champion": 5}
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        tsplit("down", *d, check=False)
    assert not any(pid_alive(p) for p in all_pids(_stack_file(tmp_path) if (tmp_path / "stack.json").exists() else after))


def test_an_interrupted_up_stops_everything_it_started(tmp_path):
    import signal
    process = subprocess.Popen([TSPLIT, "up", "--dir", str(tmp_path), "--routers", "2", "--demo-models", "--detach"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            stack_now = _stack_file(tmp_path)
        except (OSError, ValueError):
            stack_now = {}
        seen.update(pid for pid in (stack_now.get("etcd", {}).get("pid"), stack_now.get("controlplane", {}).get("pid"),
                                    stack_now.get("gateway", {}).get("pid")) if pid)
        if len(seen) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "up finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "interrupted" in err, err
    assert seen and not any(pid_alive(p) for p in seen), [p for p in seen if pid_alive(p)]
    assert not (tmp_path / "stack.json").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not leftovers, leftovers
    assert not _processes_with_files_under(tmp_path)  # routers' command lines do not name the folder; their logs do


def _processes_with_files_under(folder) -> list[int]:
    """Pids of live processes holding a file under folder open (each child's log is there)."""
    import os
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}").startswith(str(folder)) for fd in fds):
                found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_down_says_which_parts_were_not_running(tmp_path):
    import os
    import signal
    tsplit("up", "--dir", str(tmp_path), "--routers", "1", "--detach")
    data = _stack_file(tmp_path)
    os.kill(data["routers"][0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(data["routers"][0]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = tsplit("down", "--dir", str(tmp_path))
    assert f"router r-1 (pid {data['routers'][0]['pid']}) was not running" in out.stderr
    assert "stopped 3 processes" in out.stdout


def _get_rows(slug: str, d: list[str]) -> dict[str, dict]:
    view = json.loads(tsplit("get", slug, "--json", *d).stdout)
    return {v["variant"]: v for v in view["deployments"][0]["status"]["variants"]}


def _wait_rows(slug: str, d: list[str], done, timeout: float = 15.0) -> dict[str, dict]:
    """The rows of `tsplit get SLUG --json` once done(rows) (routers publish every second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _get_rows(slug, d)
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_get_shows_a_dead_challenger_as_failing_and_its_mirror_errors(stack):
    """Issue 11: a challenger whose server is down only fails over: `get` says failing, not
    live; in shadow mode every copy to it fails, and the table says so beside mirrored."""
    d, models, data = _d(stack), _models(stack), stack[1]
    dead = json.loads(tsplit("models", "register", "--endpoint", "127.0.0.1:1", "--model-name", "dead",
                             "--json", *d).stdout)["model_id"]
    desired = {"deployment": "dep_dead", "champion": models["linear-a"], "shadow_mode": False,
               "challengers": [{"model_id": dead, "traffic_pct": 50}]}
    tsplit("apply", "-f", "-", *d, stdin=json.dumps(desired))
    assert set(infer(data["routers"][0]["address"], "dep_dead", 40)) == {"champion"}   # every call failed over
    rows = _wait_rows("dep_dead", d, lambda rows: sum(r["requests"] for r in rows.values()) == 40)
    challenger = next(v for k, v in rows.items() if k != "champion")
    assert challenger["failovers"] > 0 and challenger["requests"] == 0 and challenger["health"] == "failing"
    line = next(line for line in tsplit("get", "dep_dead", *d).stdout.splitlines()
                if line.startswith(challenger["variant"]))
    assert " failing " in line and " live " not in line, line
    assert rows["champion"]["health"] == "live"

    tsplit("apply", "-f", "-", *d, stdin=json.dumps({**desired, "shadow_mode": True}))
    infer(data["routers"][0]["address"], "dep_dead", 40)   # half of them copied (its 50 %)

    def copies_settled(rows: dict[str, dict]) -> bool:
        shadow = next(v for k, v in rows.items() if k != "champion")
        return rows["champion"]["requests"] == 80 and 0 < shadow["mirrored"] == shadow["mirror_answers"]
    rows = _wait_rows("dep_dead", d, copies_settled)
    challenger = next(v for k, v in rows.items() if k != "champion")
    copies = challenger["mirrored"]
    assert copies > 0 and challenger["mirror_errors"] == copies and challenger["health"] == "failing"
    line = next(line for line in tsplit("get", "dep_dead", *d).stdout.splitlines()
                if line.startswith(challenger["variant"]))
    assert f" {copies} ({copies} errors) " in line and " failing " in line, line
