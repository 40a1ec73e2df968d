"""The `tsplit` commands' flags, as tsplit.settings dataclasses (SPEC section 7): every flag
also has its variable, TSPLIT_<FLAG> (`tsplit up --routers`: TSPLIT_ROUTERS), a flag wins
over its variable and a variable over the default, and a bad value of either is a usage
error naming it. `--help` shows each flag's variable.

Common holds the flags of every command; each command (and each action of `models` and
`deployments`) has its own class. The CLI's defaults that come from `--dir`'s stack.json
(etcd, prefix, control plane, token) are None here: tsplit.cli.context fills them in.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from tsplit.layout import Layout
from tsplit.settings import (
    add_flags, check_host_port, check_host_port_list, check_optional_host_port, option, parse_float, parse_int,
    settings_from,
)

PROCESS = None  # tsplit.settings: the CLI's variables are TSPLIT_<FLAG>

# The namespace keys under which build_parser records the flag classes of the command and
# of its action (`tsplit models register`).
COMMAND_FLAGS, ACTION_FLAGS = "_command_flags", "_action_flags"


def _prefix(text: str) -> str:
    Layout(text)
    return text


def _positive_int(text: str) -> int:
    value = parse_int(text)
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _ttl(text: str) -> int:
    try:
        return _positive_int(text)
    except ValueError as err:
        raise ValueError(f"{err} (seconds; a token with no lifetime is already expired)") from None


def _positive_float(text: str) -> float:
    value = parse_float(text)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_int(text: str) -> int:
    value = parse_int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class Common:
    dir: str | None = option(None, "stack directory with stack.json (default ./.tsplit)", metavar="DIR")
    etcd: str | None = option(None, "etcd endpoints host:port[,host:port...] (default: the stack's)",
                              parse=check_host_port_list, metavar="HOST:PORT")
    etcd_prefix: str | None = option(None, "etcd key prefix (default: the stack's, else /tsplit)", parse=_prefix,
                                     metavar="PREFIX")
    controlplane: str | None = option(None, "control plane host:port for changes (default: the stack's)",
                                      parse=check_host_port, metavar="HOST:PORT")
    token: str | None = option(None, "bearer JWT for changes (default: the stack's admin token)", metavar="JWT")
    json: bool = option(False, "print JSON only on stdout (logs go to stderr)")


@dataclass(frozen=True)
class Up:
    routers: int = option(2, "number of routers", parse=_non_negative_int, metavar="N")
    demo_models: bool = option(False, "also start and register three demo model servers")
    detach: bool = option(False, "return once healthy (stop later with `tsplit down`)")
    org: str = option("org_1", "org of the admin token", metavar="ORG")
    auth: str = option("none", "routers' auth: 'jwt' makes inference calls need a token (`tsplit token`) of the "
                               "deployment's org", choices=("none", "jwt"))


@dataclass(frozen=True)
class Demo:
    keep: bool = option(False, "leave the stack running afterwards")


@dataclass(frozen=True)
class Get:
    watch: bool = option(False, "refresh in place until Ctrl-C")
    interval: float = option(1.0, "--watch refresh period in seconds", parse=_positive_float, metavar="S")


@dataclass(frozen=True)
class History:
    after: int = option(0, "only versions after N", parse=_non_negative_int, metavar="N")
    limit: int = option(1000, "at most M versions", parse=_positive_int, metavar="M")


@dataclass(frozen=True)
class Rollback:
    to: int | None = option(None, "the version to return to", parse=_positive_int, metavar="N", required=True)


@dataclass(frozen=True)
class Apply:
    file: str | None = option(None, "the desired state file ('-' for stdin)", aliases=("-f",), metavar="FILE",
                              required=True)
    dry_run: bool = option(False, "print the plan and write nothing")


@dataclass(frozen=True)
class Guardrails:
    alpha: float | None = option(None, "the tests' level, in (0, 0.5] (default 0.01)", parse=parse_float, metavar="A")
    steps: str | None = option(None, "traffic_pct steps, e.g. 5,10,25,50 ('' for none)", metavar="LIST")
    step_after: int | None = option(None, "challenger requests since its last change before the next step "
                                          "(default 2000)", parse=_positive_int, metavar="N")
    latency_quantile: str | None = option(None, "quantile in (0, 1) or 'off' (default 0.99)", metavar="Q")
    error_rate: str | None = option(None, "the error-rate test (default on)", choices=("on", "off"))
    srm: str | None = option(None, "the sample-ratio test (default on)", choices=("on", "off"))
    off: bool = option(False, "remove the policy")


@dataclass(frozen=True)
class Token:
    sub: str = option("dev-user", "subject", metavar="SUB")
    org: str | None = option(None, "org_id claim (default: the stack's org)", metavar="ORG")
    role: str = option("admin", "owner, admin or viewer", metavar="ROLE")
    ttl: int = option(3600, "lifetime in seconds, positive", parse=_ttl, metavar="S")
    private_key: str | None = option(None, "PEM private key (default: the stack's dev key)", metavar="PEM")


@dataclass(frozen=True)
class ModelsRegister:
    endpoint: str | None = option(None, "host:port of the model server's v2 gRPC port", parse=check_host_port,
                                  metavar="HOST:PORT", required=True)
    model_name: str | None = option(None, "the model's name on that server", metavar="NAME", required=True)
    model_version: str = option("", "the model's version on that server (default: none)", metavar="VERSION")
    model_id: str | None = option(None, "mod_... (generated when absent)", metavar="ID")
    http_endpoint: str | None = option(None, "host:port of the same server's v2 REST port (optional)",
                                       parse=check_host_port, metavar="HOST:PORT")


@dataclass(frozen=True)
class ModelsUpdate:
    endpoint: str | None = option(None, "new host:port of the v2 gRPC port", parse=check_host_port,
                                  metavar="HOST:PORT")
    http_endpoint: str | None = option(None, "new host:port of the v2 REST port ('' removes it)",
                                       parse=check_optional_host_port, metavar="HOST:PORT")
    model_name: str | None = option(None, "new model name on the server", metavar="NAME")
    model_version: str | None = option(None, "new model version ('' clears it)", metavar="VERSION")


@dataclass(frozen=True)
class DeploymentsCreate:
    champion: str | None = option(None, "the champion model id (mod_...)", metavar="MODEL_ID", required=True)
    id: str | None = option(None, "dep_... (generated when absent)", metavar="SLUG")


def add(parser: argparse.ArgumentParser, cls: type, key: str = COMMAND_FLAGS) -> argparse.ArgumentParser:
    """cls's flags on parser, and cls recorded for resolve() under key."""
    add_flags(parser, cls, PROCESS)
    parser.set_defaults(**{key: cls})
    return parser


def add_common(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, Common, PROCESS)


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> argparse.Namespace:
    """args with every flag of its command set: the flag's parsed text, else its variable's,
    else the default (tsplit.settings.settings_from). SettingsError names a bad one."""
    classes: list[Any] = [Common, getattr(args, COMMAND_FLAGS, None), getattr(args, ACTION_FLAGS, None)]
    for cls in [c for c in classes if c is not None]:
        settings = settings_from(cls, PROCESS, vars(args), environ)
        for f in dataclasses.fields(cls):
            setattr(args, f.name, getattr(settings, f.name))
    return args
