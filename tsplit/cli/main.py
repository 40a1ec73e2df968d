"""tsplit: the operator CLI.

Reads (get, history, routers, models list, deployments list) come straight from etcd, so
they work while the control plane is down; changes go through the control plane. The
system is found by flags first, then TSPLIT_* variables, then DIR/stack.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tsplit.cli import flags, render
from tsplit.cli.changes import ApiCallError, ControlPlaneClient, to_json
from tsplit.cli.context import CliContext, CliError, resolve
from tsplit.cli.reads import add_slots_moved, alarm_text, read_history, read_state
from tsplit.settings import SettingsError

log = logging.getLogger("tsplit")


def _json(args) -> bool:
    return args.json


def _out(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _info(message: str) -> None:
    print(message, file=sys.stderr)


# reads ---------------------------------------------------------------------------------

def cmd_get(args, ctx: CliContext) -> int:
    from tsplit.status import router_sync_summary, summarize_deployment_status

    previous: dict[str, dict[str, Any]] = {}  # --watch: each status as last shown, the window of health

    def render_once() -> str | None:
        state = asyncio.run(read_state(ctx.require_etcd(), ctx.layout))
        if args.slug and args.slug not in state.deployments:
            raise CliError(f"deployment {args.slug} not found in etcd at {ctx.etcd_endpoints} "
                           f"(prefix {ctx.etcd_prefix})")
        chosen = [state.deployments[args.slug]] if args.slug else sorted(
            state.deployments.values(), key=lambda d: d.deployment_id)
        sync = {d.deployment_id: router_sync_summary(d, state.routers) for d in chosen}

        def status(d) -> dict[str, Any]:
            now = summarize_deployment_status(d, state.routers, state.guardrails.get(d.deployment_id),
                                              previous.get(d.deployment_id))
            previous[d.deployment_id] = now
            return now

        if _json(args):
            data = {"deployments": [{"config": d.to_json(), "status": status(d)} for d in chosen]}
            print(json.dumps(data, separators=(",", ":")) if args.watch else json.dumps(data, indent=2))
            return None
        if not chosen:
            return f"no deployments (etcd {ctx.etcd_endpoints}, prefix {ctx.etcd_prefix})"
        if not args.slug:
            return render.deployments_summary(chosen, state.models, sync)
        d = chosen[0]
        return render.deployment_view(d, status(d), state.models, sync[d.deployment_id])

    if not args.watch:
        text = render_once()
        if text is not None:
            print(text)
        return 0
    terminal = sys.stdout.isatty()
    try:
        while True:
            text = render_once()  # with --json: one JSON document a line
            if text is not None:
                if terminal:  # clear and redraw in place; a pipe or file gets one view after another
                    sys.stdout.write("\x1b[H\x1b[2J" + text + f"\n\n(every {args.interval:g} s; Ctrl-C to stop)\n")
                else:
                    sys.stdout.write(text + "\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_history(args, ctx: CliContext) -> int:
    entries, more = asyncio.run(read_history(ctx.require_etcd(), ctx.layout, args.slug, args.after, args.limit))
    if not entries and not args.after:
        raise CliError(f"no history for {args.slug} in etcd at {ctx.etcd_endpoints}")
    before = None
    if entries and args.after:  # the version before this page, to count what its first version moved
        earlier, _ = asyncio.run(read_history(ctx.require_etcd(), ctx.layout, args.slug, args.after - 1, 1))
        before = earlier[0] if earlier else None
    add_slots_moved(entries, before)
    if _json(args):
        _out({"versions": entries, "more": more})
        return 0
    rows = []
    for e in entries:
        config = e.get("config", {})
        split = ", ".join(f"{c['id']} {render.weight(c['traffic_pct'])}%"
                          for c in config.get("challengers", []) if c.get("is_active")) or "champion 100%"
        rows.append([e.get("cache_version"), e.get("action"), e.get("actor"), e.get("at"),
                     "shadow" if config.get("shadow_mode") else "split", split, e.get("slots_moved")])
    print(render.table(["version", "action", "actor", "at", "mode", "challengers", "slots moved"], rows))
    if more:
        print(f"(more: tsplit history {args.slug} --after {entries[-1].get('cache_version')})")
    return 0


def cmd_routers(args, ctx: CliContext) -> int:
    state = asyncio.run(read_state(ctx.require_etcd(), ctx.layout))
    routers = sorted(state.routers, key=lambda r: r.get("router_id", ""))
    if _json(args):
        _out({"routers": routers, "etcd_alarms": list(state.alarms)})
        return 0
    alarm = alarm_text(state.alarms)
    if alarm:
        print(alarm)
    rows = []
    for r in routers:
        applied = r.get("applied", {})
        behind = [s for s, d in state.deployments.items() if applied.get(s) != d.cache_version]
        rows.append([r.get("router_id"), r.get("kind", "router"), r.get("address"),
                     f"{len(applied) - len([s for s in behind if s in applied])}/{len(state.deployments)} current",
                     ", ".join(behind) or "-", render.ago(r.get("started_at", "")), r.get("pid")])
    print(render.table(["router", "kind", "address", "deployments", "behind", "uptime", "pid"], rows)
          if rows else "no live routers")
    return 0


def cmd_models(args, ctx: CliContext) -> int:
    command = getattr(args, "models_command", None) or "list"
    if command == "register":
        body = {"endpoint": args.endpoint, "model_name": args.model_name}
        for field in ("model_version", "model_id", "http_endpoint"):
            if getattr(args, field):
                body[field] = getattr(args, field)
        with ControlPlaneClient(ctx) as cp:
            model = to_json(cp.register_model(body))
        _out(model) if _json(args) else print(f"registered {model['model_id']} ({model['model_name']} at {model['endpoint']})")
        return 0
    if command == "update":
        body = {field: getattr(args, field) for field in ("endpoint", "http_endpoint", "model_name", "model_version")
                if getattr(args, field) is not None}
        if not body:
            raise CliError("nothing to change: give --endpoint, --http-endpoint, --model-name or --model-version")
        with ControlPlaneClient(ctx) as cp:
            model = to_json(cp.update_model(args.model_id, body))
        _out(model) if _json(args) else print(
            f"updated {model['model_id']}: {model['model_name']} at {model['endpoint']}"
            + (f" (REST {model['http_endpoint']})" if model.get("http_endpoint") else ""))
        return 0
    if command == "delete":
        with ControlPlaneClient(ctx) as cp:
            cp.delete_model(args.model_id)
        _out({"model_id": args.model_id, "deleted": True}) if _json(args) else print(f"deleted {args.model_id}")
        return 0
    state = asyncio.run(read_state(ctx.require_etcd(), ctx.layout))
    models = sorted(state.models.values(), key=lambda m: m.model_id)
    if _json(args):
        _out({"models": [m.to_json() for m in models]})
    elif not models:
        print(f"no models (etcd {ctx.etcd_endpoints}, prefix {ctx.etcd_prefix}); add one with `tsplit models register`")
    else:
        print(render.table(["model", "name", "version", "endpoint", "http endpoint", "org"],
                           [[m.model_id, m.model_name, m.model_version or "-", m.endpoint, m.http_endpoint or "-",
                             m.org_id] for m in models]))
    return 0


def cmd_deployments(args, ctx: CliContext) -> int:
    command = getattr(args, "deployments_command", None) or "list"
    if command == "create":
        body = {"champion_model_id": args.champion}
        if args.id:
            body["deployment_id"] = args.id
        with ControlPlaneClient(ctx) as cp:
            dep = to_json(cp.create_deployment(body))
        _out(dep) if _json(args) else print(f"created {dep['deployment_id']} (champion {dep['champion_model_id']}, version 1)")
        return 0
    if command == "delete":
        with ControlPlaneClient(ctx) as cp:
            cp.delete_deployment(args.slug)
        _out({"deployment_id": args.slug, "deleted": True}) if _json(args) else print(
            f"deleted {args.slug} (its history is kept; the slug is never reused)")
        return 0
    return cmd_get(argparse.Namespace(slug=None, watch=False, json=_json(args), interval=1.0), ctx)


# changes -------------------------------------------------------------------------------

def cmd_rollback(args, ctx: CliContext) -> int:
    with ControlPlaneClient(ctx) as cp:
        change = cp.rollback(args.slug, args.to)
    dep = to_json(change.deployment)
    if _json(args):
        _out({"deployment": dep, "changed": change.changed})
    elif change.changed:
        print(f"rolled {args.slug} back to version {args.to}'s traffic: now version {dep['cache_version']}")
    else:
        print(f"{args.slug} already has version {args.to}'s traffic (version {dep['cache_version']}, nothing written)")
    return 0


def load_desired(path: str) -> dict[str, Any]:
    import yaml
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = yaml.safe_load(text)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise CliError(f"{path} is not valid YAML or JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("deployment"), str):
        raise CliError(f"{path}: expected a mapping with a 'deployment' slug (see `tsplit apply --help`)")
    return data


def _pct_text(value: Any) -> str:
    return f"{render.weight(value)}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _on_off(value: Any) -> str:
    return "on" if value else "off"


def _policy_text(policy: Any) -> str:
    if not policy:
        return "none"
    return ", ".join(f"{k} {json.dumps(v)}" for k, v in policy.items())


def traffic_plan(current: dict[str, Any] | None, desired: dict[str, Any]) -> list[str]:
    """What applying desired would change, as a person writes it ("~ challenger ch_x
    (mod_y): 10% -> 20%", "~ shadow_mode: off -> on"). current None: it will be created."""
    lines = []
    if current is None:
        lines.append(f"+ deployment {desired.get('deployment')} with champion {desired.get('champion')}")
        current = {"champion_model_id": desired.get("champion"), "challengers": [], "shadow_mode": False}
    elif desired.get("champion") != current.get("champion_model_id"):
        lines.append(f"! champion {current.get('champion_model_id')} -> {desired.get('champion')}: apply cannot "
                     "change the champion (use `tsplit promote SLUG CHALLENGER`)")
    active = {c["model_id"]: c for c in current.get("challengers", []) if c.get("is_active")}
    wanted = {c.get("model_id"): c for c in desired.get("challengers") or [] if isinstance(c, dict)}
    for model_id, c in wanted.items():
        if model_id not in active:
            lines.append(f"+ challenger {model_id} at {_pct_text(c.get('traffic_pct'))}")
        elif active[model_id]["traffic_pct"] != c.get("traffic_pct"):
            lines.append(f"~ challenger {active[model_id]['id']} ({model_id}): "
                         f"{_pct_text(active[model_id]['traffic_pct'])} -> {_pct_text(c.get('traffic_pct'))}")
    for model_id, c in active.items():
        if model_id not in wanted:
            lines.append(f"- challenger {c['id']} ({model_id}): {_pct_text(c['traffic_pct'])} -> removed")
    if "shadow_mode" in desired and bool(desired["shadow_mode"]) != bool(current.get("shadow_mode")):
        lines.append(f"~ shadow_mode: {_on_off(current.get('shadow_mode'))} -> {_on_off(desired['shadow_mode'])}")
    if "guardrails" in desired and (desired["guardrails"] or None) != current.get("guardrails"):
        lines.append(f"~ guardrails: {_policy_text(current.get('guardrails'))} -> {_policy_text(desired['guardrails'])}"
                     + (" (defaults filled in by the control plane)" if desired["guardrails"] else ""))
    return lines


def cmd_apply(args, ctx: CliContext) -> int:
    desired = load_desired(args.file)
    slug = desired["deployment"]
    with ControlPlaneClient(ctx) as cp:
        try:
            current: dict[str, Any] | None = to_json(cp.get_deployment(slug))
        except ApiCallError as err:
            if err.code != "deployment_not_found":
                raise
            current = None
        plan = traffic_plan(current, desired)
        if not _json(args):
            print(f"{slug} does not exist; apply creates it:" if current is None
                  else f"{slug} at version {current['cache_version']}:")
            print("\n".join(f"  {line}" for line in plan) if plan else "  no changes")
        if args.dry_run:
            if _json(args):
                _out({"deployment_id": slug, "exists": current is not None, "plan": plan, "dry_run": True})
            else:
                print("dry run: nothing written")
            return 0
        change = cp.apply(slug, desired, expected=None if current is None else int(current["cache_version"]))
    dep = to_json(change.deployment)
    if _json(args):
        _out({"deployment": dep, "changed": change.changed, "created": current is None, "plan": plan})
    elif current is None:
        print(f"created: {slug} is version {dep['cache_version']}")
    elif change.changed:
        print(f"applied: {slug} is now version {dep['cache_version']}")
    else:
        print(f"nothing to apply: {slug} stays at version {dep['cache_version']}")
    return 0


def cmd_promote(args, ctx: CliContext) -> int:
    with ControlPlaneClient(ctx) as cp:
        current = to_json(cp.get_deployment(args.slug))
        active = [c for c in current.get("challengers", []) if c.get("is_active")]
        chosen = [c for c in active if args.challenger in (c["id"], c["model_id"])]
        if not chosen:
            names = ", ".join(f"{c['id']} ({c['model_id']})" for c in active) or "none"
            raise CliError(f"{args.challenger} is not an active challenger of {args.slug} (active: {names})")
        challenger = chosen[0]
        answer = cp.manage_traffic(args.slug, {"action": "promote_challenger", "challenger_id": challenger["id"]},
                                   expected=int(current["cache_version"]))
    dep = to_json(answer.deployment)
    if _json(args):
        _out({"deployment": dep, "promoted": challenger["id"],
              "previous_champion_model_id": current["champion_model_id"]})
    else:
        print(f"promoted {challenger['id']}: {dep['champion_model_id']} is now the champion of {args.slug} "
              f"(was {current['champion_model_id']}; version {dep['cache_version']})")
    return 0


def guardrail_policy_from_flags(args, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The policy the flags ask for, on top of the current one; None: no flag given."""
    if args.off:
        return {}
    changes: dict[str, Any] = {}
    if args.alpha is not None:
        changes["alpha"] = args.alpha
    if args.steps is not None:
        try:
            changes["steps"] = [float(s) if "." in s else int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            raise CliError(f"--steps {args.steps!r} must be comma-separated numbers, e.g. 5,10,25,50") from None
    if args.step_after is not None:
        changes["step_after_requests"] = args.step_after
    if args.latency_quantile is not None:
        if args.latency_quantile == "off":
            changes["latency_quantile"] = None
        else:
            try:
                changes["latency_quantile"] = float(args.latency_quantile)
            except ValueError:
                raise CliError(f"--latency-quantile {args.latency_quantile!r} must be a number or 'off'") from None
    for flag in ("error_rate", "srm"):
        value = getattr(args, flag)
        if value is not None:
            changes[flag] = value == "on"
    if not changes:
        return None
    return {**(current or {}), **changes}


def cmd_guardrails(args, ctx: CliContext) -> int:
    if not args.slug.startswith("dep_"):
        raise CliError(f"{args.slug!r} is not a deployment slug (dep_...)")
    state = asyncio.run(read_state(ctx.require_etcd(), ctx.layout))
    deployment = state.deployments.get(args.slug)
    if deployment is None:
        raise CliError(f"deployment {args.slug} not found in etcd at {ctx.etcd_endpoints}")
    current = deployment.guardrails.to_json() if deployment.guardrails else None
    policy = guardrail_policy_from_flags(args, current)
    if policy is not None:
        with ControlPlaneClient(ctx) as cp:
            change = cp.set_guardrails(args.slug, policy)
        dep = to_json(change.deployment)
        current = dep.get("guardrails")
        if not _json(args):
            print(f"{args.slug}: guardrails {'set' if current else 'removed'} "
                  f"({'version ' + str(dep['cache_version']) if change.changed else 'unchanged, nothing written'})")
    if _json(args):
        _out({"deployment_id": args.slug, "guardrails": current})
    elif current is None:
        print(f"{args.slug} has no guardrails (set them with e.g. `tsplit guardrails {args.slug} --steps 5,10,25`)")
    else:
        print(render.table(["field", "value"], [[k, json.dumps(v)] for k, v in current.items()]))
    return 0


# the stack -----------------------------------------------------------------------------

def cmd_up(args, ctx: CliContext) -> int:
    from tsplit.cli.stack import UpOptions, down, up

    options = UpOptions(directory=ctx.directory, routers=args.routers, demo_models=args.demo_models,
                        etcd=args.etcd, etcd_prefix=ctx.etcd_prefix,
                        org_id=args.org, auth=args.auth)
    started_at = time.monotonic()
    stack, _ = up(options, _info)
    _info(f"healthy in {time.monotonic() - started_at:.1f} s; wrote {ctx.directory / 'stack.json'}")
    if _json(args):
        _out(stack)
    else:
        print(f"gateway {stack['gateway']['url']}  control plane {stack['controlplane']['address']}  "
              f"routers {', '.join(r['address'] for r in stack['routers'])}")
    if args.detach:
        return 0
    _info("running; Ctrl-C stops everything")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    stack_file = ctx.directory / "stack.json"
    try:
        while not stop["now"] and stack_file.exists():  # `tsplit down` from elsewhere removes it
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    if stack_file.exists():
        down(ctx.directory, _info)
    return 0


def cmd_down(args, ctx: CliContext) -> int:
    from tsplit.cli.stack import down

    count = down(ctx.directory, _info)
    print(f"stopped {count} processes from {ctx.directory}")
    return 0


def cmd_token(args, ctx: CliContext) -> int:
    from tsplit import devkeys

    key_path = Path(args.private_key) if args.private_key else Path(
        ctx.stack.get("jwt", {}).get("private_key") or ctx.directory / "dev-private.pem")
    if not key_path.exists():
        raise CliError(f"no dev private key at {key_path}: run `tsplit up` first or pass --private-key")
    org = args.org or ctx.stack.get("jwt", {}).get("org_id") or "org_1"
    print(devkeys.mint_token(key_path.read_bytes(), sub=args.sub, org_id=org, role=args.role, ttl_s=args.ttl))
    return 0


def cmd_demo(args, ctx: CliContext) -> int:
    """Without --dir (or TSPLIT_DIR) the demo runs in a temporary folder that it removes
    afterwards (unless --keep)."""
    import dataclasses
    import shutil
    import tempfile

    from tsplit.cli.demo import run_demo

    if args.dir:  # --dir or TSPLIT_DIR
        return run_demo(ctx, keep=args.keep)
    scratch = Path(tempfile.mkdtemp(prefix="tsplit-demo."))
    try:
        return run_demo(dataclasses.replace(ctx, directory=scratch, stack={}), keep=args.keep)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


# parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The commands and their flags (tsplit.cli.flags: each flag's variable is TSPLIT_<FLAG>)."""
    common = argparse.ArgumentParser(add_help=False)
    flags.add_common(common)

    parser = argparse.ArgumentParser(
        prog="tsplit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_action(subparsers, name: str, help_text: str, cls: type | None = None) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, parents=[common], help=help_text, description=help_text)
        return flags.add(p, cls, flags.ACTION_FLAGS) if cls else p

    def add(name: str, func, help_text: str, cls: type | None = None, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text, **kw)
        p.set_defaults(func=func)
        return flags.add(p, cls) if cls else p

    add("up", cmd_up, "start the local stack: etcd, control plane, gateway, routers (and demo models)", flags.Up)
    add("down", cmd_down, "stop every process of the local stack in --dir")
    add("demo", cmd_demo, "the scripted end-to-end story (what scripts/demo runs)", flags.Demo)

    p = add("get", cmd_get, "show deployments, or one deployment's variants, stats and router sync (from etcd)",
            flags.Get)
    p.add_argument("slug", nargs="?", help="a deployment slug (dep_...)")
    p = add("history", cmd_history, "the versions of a deployment: action, actor, time, split (from etcd)",
            flags.History)
    p.add_argument("slug")
    p = add("rollback", cmd_rollback, "a new version whose challengers and shadow mode equal version N's",
            flags.Rollback)
    p.add_argument("slug")
    add("apply", cmd_apply, "apply a desired traffic state (YAML or JSON) as one change, like `cortex deploy`",
        flags.Apply,
        epilog="file format:\n  deployment: dep_xK8m\n  champion: mod_a1b2c3d4\n  shadow_mode: false\n"
               "  challengers:\n    - model_id: mod_nY5kT2Wq\n      traffic_pct: 10\n"
               "  guardrails:             # optional; absent: unchanged, {} removes\n    steps: [5, 10, 25]\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p = add("promote", cmd_promote, "make a challenger the champion (promote_challenger; the old champion is dropped)")
    p.add_argument("slug")
    p.add_argument("challenger", metavar="CHALLENGER", help="the challenger's id (ch_...) or its model id (mod_...)")
    p = add("guardrails", cmd_guardrails, "show a deployment's guardrail policy; with flags, set it (one version)",
            flags.Guardrails)
    p.add_argument("slug")
    add("routers", cmd_routers, "live routers and clients: address, applied versions, uptime (from etcd)")
    add("token", cmd_token, "mint a dev token with the local stack's key (production tokens come from your IdP)",
        flags.Token)

    p = add("models", cmd_models, "register, change, delete or list models (bare `tsplit models` lists)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    add_model_command = functools.partial(add_action, msub)
    add_model_command("register", "register an Open Inference Protocol v2 model (gRPC endpoint, optional REST)",
                      flags.ModelsRegister)
    u = add_model_command("update", "change a model in place: routers follow, deployments keep naming it",
                          flags.ModelsUpdate)
    u.add_argument("model_id", metavar="MODEL_ID")
    x = add_model_command("delete", "delete a model no deployment uses as champion or active challenger")
    x.add_argument("model_id", metavar="MODEL_ID")
    add_model_command("list", "list models (from etcd)")

    p = add("deployments", cmd_deployments, "create, delete or list deployments (bare `tsplit deployments` lists)")
    dsub = p.add_subparsers(dest="deployments_command", metavar="ACTION")
    add_deployment_command = functools.partial(add_action, dsub)
    add_deployment_command("create", "create a deployment with a champion model (version 1)", flags.DeploymentsCreate)
    d = add_deployment_command("delete", "delete a deployment (its history is kept; the slug is never reused)")
    d.add_argument("slug")
    add_deployment_command("list", "list deployments (from etcd)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TSPLIT_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        flags.resolve(args, os.environ)
    except SettingsError as err:  # a usage error, as argparse's own
        print(f"tsplit {args.command}: error: {err}", file=sys.stderr)
        return 2
    try:
        return args.func(args, resolve(args))
    except CliError as err:
        print(f"tsplit {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tsplit get --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
