"""Where the CLI finds the system: flags first, then TSPLIT_* variables, then D/stack.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsplit.layout import DEFAULT_PREFIX, Layout


class CliError(Exception):
    """A failure the CLI reports as one clear line and exit code 1."""


def load_stack(directory: Path) -> dict[str, Any]:
    path = directory / "stack.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise CliError(f"{path} is not valid JSON: {err}") from err


@dataclass(frozen=True)
class CliContext:
    directory: Path
    etcd_endpoints: str | None
    etcd_prefix: str
    controlplane: str | None
    token: str | None
    stack: dict[str, Any]

    @property
    def layout(self) -> Layout:
        return Layout(self.etcd_prefix)

    def require_etcd(self) -> str:
        if not self.etcd_endpoints:
            raise CliError(
                f"no etcd to read: pass --etcd, set TSPLIT_ETCD, or run `tsplit up --dir {self.directory}` first")
        return self.etcd_endpoints

    def require_controlplane(self) -> str:
        if not self.controlplane:
            raise CliError(
                "no control plane: pass --controlplane, set TSPLIT_CONTROLPLANE, "
                f"or run `tsplit up --dir {self.directory}` first")
        return self.controlplane

    def require_token(self) -> str:
        if not self.token:
            raise CliError("no token: pass --token, set TSPLIT_TOKEN, or use a stack started by `tsplit up`")
        return self.token


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v), None)


def resolve(args: Any) -> CliContext:
    """The context of a command whose flags tsplit.cli.flags.resolve set (a flag, else its
    TSPLIT_* variable): what they leave unset comes from DIR/stack.json."""
    directory = Path(_first(getattr(args, "dir", None), ".tsplit"))
    stack = load_stack(directory)
    stack_etcd = ",".join(stack.get("etcd", {}).get("endpoints", [])) or None
    return CliContext(
        directory=directory,
        etcd_endpoints=_first(getattr(args, "etcd", None), stack_etcd),
        etcd_prefix=_first(getattr(args, "etcd_prefix", None), stack.get("etcd", {}).get("prefix"), DEFAULT_PREFIX),
        controlplane=_first(getattr(args, "controlplane", None), stack.get("controlplane", {}).get("address")),
        token=_first(getattr(args, "token", None), stack.get("jwt", {}).get("admin_token")),
        stack=stack,
    )
