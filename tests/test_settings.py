"""tsplit.settings: flags, variables (shared TSPLIT_<FLAG>, own TSPLIT_<PROCESS>_<FLAG>),
defaults, validation that names the flag; the one host:port parser and durations."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tsplit.settings import (
    SettingsError, check_host_port, option, parse_duration, parse_flags, parse_host_port,
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
