"""tsplit.settings: flags, variables (shared TSPLIT_<FLAG>, own TSPLIT_<PROCESS>_<FLAG>),
defaults, validation that names the flag; the one host:port parser and durations."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from tsplit.settings import (
    SettingsError, add_flags, check_host_port, check_optional_host_port, option, parse_duration, parse_flags,
    parse_host_port, parse_host_port_list, settings_from, variable_name,
)


@dataclass(frozen=True)
class Flags:
    listen: str = option("127.0.0.1:8080", "where", parse=check_host_port)
    etcd_prefix: str = option("/tsplit", "prefix", shared=True)
    workers: int = option(1, "how many")
    fast: bool = option(False, "a switch")


def test_flag_beats_variable_beats_default_and_names_follow_spec_7():
    assert parse_flags(Flags, "demo", [], {}) == Flags()
    env = {"TSPLIT_DEMO_LISTEN": ":0", "TSPLIT_ETCD_PREFIX": "/env", "TSPLIT_DEMO_WORKERS": "3",
           "TSPLIT_DEMO_FAST": "true", "TSPLIT_LISTEN": "9.9.9.9:1"}
    assert parse_flags(Flags, "demo", [], env) == Flags("127.0.0.1:0", "/env", 3, True)
    assert parse_flags(Flags, "demo", ["--listen", "[::1]:5", "--workers", "2"], env) == Flags("[::1]:5", "/env", 2, True)


def test_a_bad_value_names_its_flag_or_variable():
    with pytest.raises(SettingsError, match="--workers"):
        parse_flags(Flags, "demo", ["--workers", "many"], {})
    with pytest.raises(SettingsError, match="TSPLIT_DEMO_LISTEN"):
        parse_flags(Flags, "demo", [], {"TSPLIT_DEMO_LISTEN": "nowhere"})


@pytest.mark.parametrize("text, parsed", [
    (":0", ("127.0.0.1", 0)), ("127.0.0.1:8001", ("127.0.0.1", 8001)), ("[::1]:9", ("::1", 9)),
    ("example.org:443", ("example.org", 443)),
])
def test_host_port(text, parsed):
    assert parse_host_port(text) == parsed


@pytest.mark.parametrize("text", ["8080", "host:", "host:65536", "host:-1", "a b:1", "user@h:1"])
def test_not_host_port(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_durations():
    assert [parse_duration(t) for t in ("90", "90s", "15m", "24h", "2d", "250ms")] == [90, 90, 900, 86400, 172800, 0.25]
    with pytest.raises(ValueError):
        parse_duration("soon")


# --- the operator CLI's rule, choices, required flags; the one host:port parser ----------

@dataclass(frozen=True)
class CliFlags:
    routers: int = option(2, "how many")
    auth: str = option("none", "kind", choices=("none", "jwt"))
    file: str | None = option(None, "where", aliases=("-f",), required=True)
    interval: float = option(1.0, "seconds")


def test_the_cli_names_every_variable_tsplit_flag():
    assert variable_name("routers", None, shared=False) == "TSPLIT_ROUTERS"
    assert variable_name("listen", "router", shared=False) == "TSPLIT_ROUTER_LISTEN"
    assert variable_name("etcd_prefix", "router", shared=True) == "TSPLIT_ETCD_PREFIX"
    env = {"TSPLIT_ROUTERS": "3", "TSPLIT_AUTH": "jwt", "TSPLIT_FILE": "a.yaml", "TSPLIT_INTERVAL": "0.5"}
    assert settings_from(CliFlags, None, {}, env) == CliFlags(3, "jwt", "a.yaml", 0.5)
    assert settings_from(CliFlags, None, {"routers": "1", "file": "b.yaml"}, env) == CliFlags(1, "jwt", "b.yaml", 0.5)


@pytest.mark.parametrize("env, says", [
    ({"TSPLIT_ROUTERS": "many"}, "TSPLIT_ROUTERS (--routers) 'many': is not a whole number"),
    ({"TSPLIT_AUTH": "basic"}, "TSPLIT_AUTH (--auth) 'basic': must be one of none, jwt"),
    ({"TSPLIT_INTERVAL": "nan"}, "TSPLIT_INTERVAL (--interval) 'nan': is not a finite number"),
    ({"TSPLIT_INTERVAL": "soon"}, "TSPLIT_INTERVAL (--interval) 'soon': is not a number"),
])
def test_a_bad_variable_is_an_error_naming_it(env, says):
    with pytest.raises(SettingsError) as err:
        settings_from(CliFlags, None, {"file": "x"}, env)
    assert str(err.value) == says


def test_a_required_flag_may_come_from_its_variable_and_its_absence_names_both():
    with pytest.raises(SettingsError, match=r"^--file is required \(or set TSPLIT_FILE\)$"):
        settings_from(CliFlags, None, {}, {})
    parser = argparse.ArgumentParser()
    add_flags(parser, CliFlags, None)
    assert settings_from(CliFlags, None, vars(parser.parse_args(["-f", "c.yaml"])), {}).file == "c.yaml"
    assert vars(parser.parse_args([])) == {}  # absent flags stay absent: variables and defaults apply


def test_help_shows_each_flags_variable_choices_and_default():
    parser = argparse.ArgumentParser()
    add_flags(parser, CliFlags, None)
    text = " ".join(parser.format_help().split())
    assert "--routers ROUTERS how many [env TSPLIT_ROUTERS; default 2]" in text
    assert "--auth {none,jwt} kind [env TSPLIT_AUTH; default none]" in text
    assert "-f FILE, --file FILE where [required; env TSPLIT_FILE]" in text


@pytest.mark.parametrize("text, canonical", [
    (":0", "127.0.0.1:0"), (" 10.0.0.1:2379 ", "10.0.0.1:2379"), ("[::1]:9", "[::1]:9"), ("etcd-0.etcd:2379", "etcd-0.etcd:2379"),
])
def test_one_host_port_parser_gives_one_canonical_text(text, canonical):
    assert check_host_port(text) == canonical
    assert parse_host_port_list(f"http://{text}, {text}") == [canonical, canonical]
    assert check_optional_host_port(text) == canonical and check_optional_host_port("") == ""


@pytest.mark.parametrize("text", ["", " , ", "h1:2379,nowhere", "h:99999"])
def test_not_a_host_port_list(text):
    with pytest.raises(ValueError):
        parse_host_port_list(text)
