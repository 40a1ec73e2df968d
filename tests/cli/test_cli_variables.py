"""Every `tsplit` flag, the commands' own included, also has its variable TSPLIT_<FLAG>
(SPEC section 7): a flag beats its variable, a variable beats the default, `--help` names
each variable, and a bad value is a usage error naming the variable. Host:port flags go
through the one parser of tsplit.settings, so `:0` and friends read as they do in every
process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.gateway.server import GatewayFlags
from dataplane.settings import RouterSettings
from tsplit.cli import flags
from tsplit.cli.main import build_parser
from tsplit.settings import SettingsError, settings_from

TSPLIT = str(Path(sys.executable).parent / "tsplit")


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TSPLIT_")}
    result = subprocess.run([TSPLIT, *args], capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"tsplit {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def parsers(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """(command path, parser) of every command and action of `tsplit`."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, path + (name,))


def resolved(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    return flags.resolve(build_parser().parse_args(argv), env)


def test_every_flag_of_every_command_names_its_variable_in_help():
    checked = 0
    for path, parser in parsers():
        for action in parser._actions:
            if not action.option_strings or action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            assert f"env TSPLIT_{action.dest.upper()}" in (action.help or ""), (path, action.option_strings)
            checked += 1
    assert checked > 40  # the commands' own flags are in, not only the common ones
    text = " ".join(run("up", "--help").stdout.split())
    assert "--routers N number of routers [env TSPLIT_ROUTERS; default 2]" in text


@pytest.mark.parametrize("argv, env, want", [
    (["up"], {"TSPLIT_ROUTERS": "3", "TSPLIT_DEMO_MODELS": "1", "TSPLIT_AUTH": "jwt"},
     {"routers": 3, "demo_models": True, "auth": "jwt", "detach": False}),
    (["up", "--routers", "1"], {"TSPLIT_ROUTERS": "3"}, {"routers": 1}),        # the flag wins
    (["up"], {}, {"routers": 2, "org": "org_1", "auth": "none"}),               # the defaults
    (["history", "dep_x"], {"TSPLIT_LIMIT": "5", "TSPLIT_AFTER": "2"}, {"limit": 5, "after": 2}),
    (["get"], {"TSPLIT_WATCH": "true", "TSPLIT_INTERVAL": "0.25"}, {"watch": True, "interval": 0.25}),
    (["rollback", "dep_x"], {"TSPLIT_TO": "3"}, {"to": 3}),
    (["apply"], {"TSPLIT_FILE": "d.yaml", "TSPLIT_DRY_RUN": "yes"}, {"file": "d.yaml", "dry_run": True}),
    (["apply", "-f", "e.yaml"], {"TSPLIT_FILE": "d.yaml"}, {"file": "e.yaml"}),
    (["guardrails", "dep_x"], {"TSPLIT_STEPS": "5,10", "TSPLIT_SRM": "off"}, {"steps": "5,10", "srm": "off"}),
    (["token"], {"TSPLIT_TTL": "60", "TSPLIT_ROLE": "viewer"}, {"ttl": 60, "role": "viewer", "sub": "dev-user"}),
    (["models", "register"], {"TSPLIT_ENDPOINT": ":9001", "TSPLIT_MODEL_NAME": "m"},
     {"endpoint": "127.0.0.1:9001", "model_name": "m", "model_version": ""}),
    (["models", "update", "mod_x"], {"TSPLIT_HTTP_ENDPOINT": "[::1]:8000"}, {"http_endpoint": "[::1]:8000"}),
    (["deployments", "create"], {"TSPLIT_CHAMPION": "mod_a", "TSPLIT_ID": "dep_b"}, {"champion": "mod_a", "id": "dep_b"}),
    (["--json", "routers"], {"TSPLIT_ETCD": "h1:1, h2:2", "TSPLIT_DIR": "/d"},
     {"json": True, "etcd": "h1:1,h2:2", "dir": "/d"}),
    (["routers", "--etcd", ":2379"], {"TSPLIT_ETCD": "h1:1"}, {"etcd": "127.0.0.1:2379"}),
])
def test_a_variable_sets_its_flag_and_the_flag_beats_it(argv, env, want):
    args = resolved(argv, env)
    assert {k: getattr(args, k) for k in want} == want


@pytest.mark.parametrize("argv, env, says", [
    (["up"], {"TSPLIT_ROUTERS": "many"}, "TSPLIT_ROUTERS (--routers) 'many': is not a whole number"),
    (["up"], {"TSPLIT_AUTH": "basic"}, "TSPLIT_AUTH (--auth) 'basic': must be one of none, jwt"),
    (["get"], {"TSPLIT_INTERVAL": "-1"}, "TSPLIT_INTERVAL (--interval) '-1': must be a positive number of seconds"),
    (["token"], {"TSPLIT_TTL": "-100"}, "TSPLIT_TTL (--ttl) '-100': must be positive"),
    (["routers"], {"TSPLIT_ETCD": "nowhere"}, "TSPLIT_ETCD (--etcd) 'nowhere': 'nowhere' is not host:port"),
    (["routers"], {"TSPLIT_ETCD_PREFIX": "no-slash"}, "TSPLIT_ETCD_PREFIX (--etcd-prefix) 'no-slash'"),
    (["rollback", "dep_x"], {}, "--to is required (or set TSPLIT_TO)"),
    (["models", "register", "--model-name", "m"], {}, "--endpoint is required (or set TSPLIT_ENDPOINT)"),
])
def test_a_bad_variable_or_a_missing_flag_is_a_usage_error_naming_it(argv, env, says):
    with pytest.raises(SettingsError) as err:
        resolved(argv, env)
    assert says in str(err.value)
    result = run(*argv, env=env, check=False)   # the real command: exit 2, one line, no traceback
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("text, canonical", [
    (":0", "127.0.0.1:0"), (":8001", "127.0.0.1:8001"), ("[::1]:9", "[::1]:9"), ("localhost:7", "localhost:7"),
    ("8080", None), ("h:", None), ("h:65536", None), ("a b:1", None),
])
def test_cli_host_port_flags_read_as_every_process_reads_them(text, canonical):
    """One parser: the CLI's --controlplane and --endpoint, the gateway's and the router's
    --listen take or refuse a text alike, and give the same canonical host:port."""
    def cli(argv: list[str], field: str):
        try:
            return getattr(resolved(argv, {}), field)
        except SettingsError:
            return None

    def process(cls, process_name: str, **others: str):
        try:
            return settings_from(cls, process_name, {"listen": text, **others}, {}).listen
        except SettingsError:
            return None

    seen = {
        "tsplit --controlplane": cli(["routers", "--controlplane", text], "controlplane"),
        "tsplit models register --endpoint": cli(["models", "register", "--model-name", "m", "--endpoint", text],
                                                 "endpoint"),
        "tsplit-gateway --listen": process(GatewayFlags, "gateway", controlplane="127.0.0.1:1", jwks="j.json"),
        "tsplit-router --listen": process(RouterSettings, "router"),
    }
    assert set(seen.values()) == {canonical}, seen


def test_up_reads_and_changes_take_their_flags_from_variables(tmp_path):
    """A real stack, each command's own flags given only as variables."""
    env = {"TSPLIT_DIR": str(tmp_path)}
    run("up", env={**env, "TSPLIT_ROUTERS": "1", "TSPLIT_DETACH": "1"})
    try:
        stack = json.loads((tmp_path / "stack.json").read_text())
        assert len(stack["routers"]) == 1
        model = json.loads(run("models", "register", env={
            **env, "TSPLIT_ENDPOINT": ":9", "TSPLIT_MODEL_NAME": "m-env", "TSPLIT_JSON": "1"}).stdout)
        assert model["endpoint"] == "127.0.0.1:9" and model["model_name"] == "m-env"
        run("deployments", "create", env={**env, "TSPLIT_CHAMPION": model["model_id"], "TSPLIT_ID": "dep_env"})
        routers = json.loads(run("routers", env={**env, "TSPLIT_JSON": "true"}).stdout)["routers"]
        assert [r["router_id"] for r in routers] == ["r-1"]
        history = json.loads(run("history", "dep_env", env={**env, "TSPLIT_JSON": "1", "TSPLIT_LIMIT": "1"}).stdout)
        assert [v["cache_version"] for v in history["versions"]] == [1]
        refused = run("models", "register", env={**env, "TSPLIT_ENDPOINT": "nowhere", "TSPLIT_MODEL_NAME": "m"},
                      check=False)
        assert refused.returncode == 2 and "TSPLIT_ENDPOINT" in refused.stderr
    finally:
        run("down", env=env, check=False)
    assert not (tmp_path / "stack.json").exists()
