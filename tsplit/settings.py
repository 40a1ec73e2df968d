"""One way for every process to take its settings (SPEC section 7): a frozen dataclass whose
fields are the flags. Each field becomes a `--flag`, and its environment variable is
TSPLIT_<FLAG> for the flags processes share (`--etcd`, `--etcd-prefix`, the JWT flags, ...)
or TSPLIT_<PROCESS>_<FLAG> for a process's own (`--listen`, ...). A flag wins over its
variable, a variable over the default; every value goes through the field's parser, and a
bad one is a SettingsError naming the flag and the variable.

    @dataclass(frozen=True)
    class Flags:
        listen: str = option("127.0.0.1:8080", "host:port to serve on", parse=check_host_port)
        etcd: str = option("127.0.0.1:2379", "etcd endpoints", shared=True)

    flags = parse_flags(Flags, "gateway", argv, environ)   # Flags(listen=..., etcd=...)

Also here: the one host:port parser (":0" is a free port on 127.0.0.1) and durations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"


class SettingsError(ValueError):
    """A flag or variable that cannot work; the message names it."""


def option(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, shared: bool = False,
           metavar: str | None = None, name: str | None = None) -> Any:
    """A settings field: its default, its help, the parser of its text (default: the
    default's type; bool fields are switches), whether processes share it and the flag's
    name when it is not the field's (mirror_timeout_s: name="mirror_timeout")."""
    return dataclasses.field(default=default, metadata={
        "help": help, "parse": parse, "shared": shared, "metavar": metavar, "name": name})


def _name(f: dataclasses.Field) -> str:
    return f.metadata.get("name") or f.name


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def variable_name(field_name: str, process: str, shared: bool) -> str:
    suffix = field_name.upper().replace("-", "_")
    return f"TSPLIT_{suffix}" if shared else f"TSPLIT_{process.upper()}_{suffix}"


def add_flags(parser: argparse.ArgumentParser, cls: type, process: str) -> None:
    """One argument per field of cls; values stay text (None when absent) until parse_flags."""
    for f in dataclasses.fields(cls):
        variable = variable_name(_name(f), process, f.metadata.get("shared", False))
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, "", False) else f"; default {default}"
        text = f"{f.metadata.get('help', '')} [env {variable}{shown}]"
        if isinstance(default, bool):
            parser.add_argument(flag_name(_name(f)), dest=f.name, action="store_const", const="true", default=None,
                                help=text)
        else:
            parser.add_argument(flag_name(_name(f)), dest=f.name, default=None, metavar=f.metadata.get("metavar"),
                                help=text)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def settings_from(cls: type[T], process: str, values: Mapping[str, str | None], environ: Mapping[str, str]) -> T:
    """cls from flag texts by field name (None: not given), then variables, then defaults."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        shared = f.metadata.get("shared", False)
        variable = variable_name(_name(f), process, shared)
        text = values.get(f.name)
        source = flag_name(_name(f))
        if text is None and environ.get(variable, "") != "":
            text, source = environ[variable], f"{variable} ({source})"
        if text is None:
            continue
        default = f.default
        parse = f.metadata.get("parse") or (
            _parse_bool if isinstance(default, bool) else type(default) if default is not None else str)
        try:
            kwargs[f.name] = parse(text)
        except (ValueError, TypeError) as err:
            raise SettingsError(f"{source} {text!r}: {err}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise SettingsError(str(err)) from None


def parse_flags(cls: type[T], process: str, argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None, *, prog: str | None = None,
                description: str | None = None) -> T:
    """cls from the command line and the environment (os.environ by default)."""
    parser = argparse.ArgumentParser(prog=prog or f"tsplit-{process}", description=description)
    add_flags(parser, cls, process)
    args = parser.parse_args(argv)
    return settings_from(cls, process, vars(args), os.environ if environ is None else environ)


# --- values -------------------------------------------------------------------------------

def parse_host_port(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """"host:port", "[v6]:port" or ":port" (the host then is 127.0.0.1); port 0 picks a
    free port. The one parser every process and subcommand uses."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port with a port from 0 to 65535")
    host = host.strip("[]") or default_host
    if any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{text!r} has no valid host")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_host_port(text: str) -> str:
    """text as a canonical host:port (":0" -> "127.0.0.1:0"); ValueError when it is not one."""
    return join_host_port(*parse_host_port(text))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "24h", "2d" or "250ms"."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number of seconds, or with ms, s, m, h or d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def to_argv(settings: Any) -> list[str]:
    """The flags that give settings (a dataclass of options) back: for a child process."""
    argv: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            argv += [flag_name(_name(f))] if value else []
        elif value != "":
            argv += [flag_name(_name(f)), ",".join(value) if isinstance(value, tuple) else str(value)]
    return argv
