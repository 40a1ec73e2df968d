"""One way for every process and `tsplit` command to take its settings (SPEC section 7): a
frozen dataclass whose fields are the flags. Each field becomes a `--flag`, and its
environment variable is TSPLIT_<FLAG> for the flags processes share (`--etcd`,
`--etcd-prefix`, the JWT flags, ...) or TSPLIT_<PROCESS>_<FLAG> for a process's own
(`--listen`, ...); the operator CLI (process None) names every flag's variable
TSPLIT_<FLAG> (`tsplit up --routers`: TSPLIT_ROUTERS). A flag wins over its variable, a
variable over the default; every value, flag or variable, goes through the field's parser
(and its choices), and a bad one is a SettingsError naming the flag and the variable.

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
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"


class SettingsError(ValueError):
    """A flag or variable that cannot work; the message names it."""


def option(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, shared: bool = False,
           metavar: str | None = None, name: str | None = None, choices: Sequence[str] = (),
           aliases: Sequence[str] = (), required: bool = False) -> Any:
    """A settings field: its default, its help, the parser of its text (default: the
    default's type; bool fields are switches), whether processes share it, the flag's
    name when it is not the field's (mirror_timeout_s: name="mirror_timeout"), the texts
    it accepts (choices), other spellings of the flag ("-f") and whether the flag or its
    variable must be given."""
    return dataclasses.field(default=default, metadata={
        "help": help, "parse": parse, "shared": shared, "metavar": metavar, "name": name,
        "choices": tuple(choices), "aliases": tuple(aliases), "required": required})


def _name(f: dataclasses.Field) -> str:
    return f.metadata.get("name") or f.name


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def variable_name(field_name: str, process: str | None, shared: bool) -> str:
    """TSPLIT_<FLAG> for a shared flag or any of the CLI's (process None), else
    TSPLIT_<PROCESS>_<FLAG>."""
    suffix = field_name.upper().replace("-", "_")
    return f"TSPLIT_{suffix}" if shared or not process else f"TSPLIT_{process.upper()}_{suffix}"


def add_flags(parser: argparse.ArgumentParser, cls: type, process: str | None) -> None:
    """One argument per field of cls, its help naming its variable; values stay text until
    settings_from (an absent flag is absent from the namespace: argparse.SUPPRESS, so a
    flag given before a subcommand survives the subcommand's parser)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        variable = variable_name(_name(f), process, meta.get("shared", False))
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, "", False) else f"; default {default}"
        required = "required; " if meta.get("required") else ""
        text = f"{meta.get('help', '')} [{required}env {variable}{shown}]".replace("%", "%%")
        names = [*meta.get("aliases", ()), flag_name(_name(f))]
        if isinstance(default, bool):
            parser.add_argument(*names, dest=f.name, action="store_const", const="true",
                                default=argparse.SUPPRESS, help=text)
        else:
            choices = meta.get("choices") or ()
            metavar = meta.get("metavar") or ("{" + ",".join(choices) + "}" if choices else None)
            parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=text)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("is not a whole number") from None


def parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: parse_int, float: parse_float}


def settings_from(cls: type[T], process: str | None, values: Mapping[str, Any], environ: Mapping[str, str]) -> T:
    """cls from flag texts by field name (absent or None: not given), then variables, then
    defaults."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        variable = variable_name(_name(f), process, meta.get("shared", False))
        text = values.get(f.name)
        source = flag_name(_name(f))
        if text is None and environ.get(variable, "") != "":
            text, source = environ[variable], f"{variable} ({source})"
        if text is None:
            if meta.get("required"):
                raise SettingsError(f"{source} is required (or set {variable})")
            continue
        choices = meta.get("choices") or ()
        if choices and text not in choices:
            raise SettingsError(f"{source} {text!r}: must be one of {', '.join(choices)}")
        parse = meta.get("parse") or _PARSERS.get(type(f.default), str)
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


def check_optional_host_port(text: str) -> str:
    """check_host_port, or "" for "" (a flag whose empty value turns a thing off)."""
    return check_host_port(text) if text.strip() else ""


def parse_host_port_list(text: str | Sequence[str]) -> list[str]:
    """"h1:2379,h2:2379" (or a list; an "http://" in front is dropped) as canonical
    host:port texts, each through parse_host_port; ValueError when one is not host:port or
    none is given."""
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = [check_host_port(e.strip().removeprefix("http://")) for e in items if e.strip()]
    if not endpoints:
        raise ValueError("no host:port given")
    return endpoints


def check_host_port_list(text: str) -> str:
    """parse_host_port_list joined by commas: the text form of a --etcd flag."""
    return ",".join(parse_host_port_list(text))


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
